# frozen_string_literal: true

require_relative "../domain_generator_base"

module ActsAsTbackend
  module TcbGenerators
    # `rails g tcb:domain notifications send_welcome_email:user_id,email`: a pub/sub domain
    # module (no persistence) whose facade dispatches each command to its handler.
    class DomainGenerator < DomainGeneratorBase
      namespace "tcb:domain"
      desc "Creates a TCB domain module without persistence: module with facade, command handlers."
    end
  end
end
