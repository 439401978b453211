# frozen_string_literal: true

# `include_context "active job test queue"`: ActiveJob's :test adapter for the example
# (jobs are recorded, not run) with its log in `active_job_log`, and `perform_enqueued`,
# which runs the recorded jobs one by one, as a worker would, until none is left (jobs
# they enqueue included).
RSpec.shared_context "active job test queue" do
  let(:active_job_log) { StringIO.new }

  around do |example|
    require "active_job"
    require "logger"
    require "stringio"
    adapter = ActiveJob::Base.queue_adapter
    logger = ActiveJob::Base.logger
    ActiveJob::Base.queue_adapter = :test
    ActiveJob::Base.logger = Logger.new(active_job_log)
    example.run
  ensure
    ActiveJob::Base.queue_adapter = adapter
    ActiveJob::Base.logger = logger
  end

  def enqueued_jobs
    ActiveJob::Base.queue_adapter.enqueued_jobs
  end

  # Runs the next recorded job.
  def perform_next_job
    job = enqueued_jobs.shift
    ActiveJob::Base.execute(job.transform_keys(&:to_s).merge("job_class" => job[:job].name))
  end

  def perform_enqueued
    perform_next_job until enqueued_jobs.empty?
  end
end
