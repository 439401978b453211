# frozen_string_literal: true

require "spec_helper"
require "net/http"
require "tmpdir"

# Issue 4, "tests with real parts": Puma in cluster mode (2 workers × 4 threads, app
# preloaded in the master with a TBackend connection already open) serves a tiny app that
# mirrors every order it creates; a client process hammers it for a few seconds. Every
# committed row's fact is in the daemon, and no fact is stored twice.
RSpec.describe "Mirroring from a Puma cluster" do
  include TbackendSpec::ClientHelpers

  let(:hammer_seconds) { 3 }
  let(:hammer_threads) { 8 }

  include_context "rails app"

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  def start_puma(env)
    log = File.join(app, "puma.log")
    pid = Process.spawn(TbackendSpec::RailsApp.env(env), RbConfig.ruby, "-S", "puma", "-C", "config/puma.rb",
                        chdir: app, out: log, err: log, pgroup: true)
    up = eventually(60, interval: 0.1) do
      Net::HTTP.get_response(URI("http://127.0.0.1:#{env['PORT']}/ping")).code == "200"
    rescue SystemCallError, Net::ReadTimeout
      false
    end
    raise "puma did not come up:\n#{File.read(log)}" unless up

    pid
  end

  def stop_puma(pid)
    Process.kill("TERM", pid)
    Timeout.timeout(30) { Process.wait(pid) }
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  rescue Timeout::Error
    Process.kill("KILL", -pid)
    Process.wait(pid)
  end

  # POSTs orders from several threads for a few seconds; returns [created ids, pids].
  def hammer(port)
    deadline = monotonic + hammer_seconds
    threads = Array.new(hammer_threads) do |t|
      Thread.new do
        http = Net::HTTP.start("127.0.0.1", port)
        created = []
        n = 0
        while monotonic < deadline
          response = http.post("/orders", URI.encode_www_form(number: "T#{t}-#{n += 1}"))
          created << JSON.parse(response.body) if response.code == "200"
        end
        created
      ensure
        http&.finish
      end
    end
    join_all(threads, hammer_seconds + 60).flatten
  end

  # Issue 10: Puma warns "Detected N Thread(s) started in app boot" when the preloaded
  # master has threads at fork time, and a TCB bus used to start its dispatcher at
  # configure. The master's threads are also recorded in before_fork, where Puma counts them.
  let(:tcb_app_files) do
    {
      "config/initializers/tcb.rb" => <<~RUBY,
        require "acts_as_tbackend/tcb"

        TbPinged = Struct.new(:pid)
        module TbReactions
          include TCB::HandlesEvents

          class Record
            def call(event)
              File.write(ENV.fetch("TCB_REACTIONS"), "\#{Process.pid} \#{event.pid}\n", mode: "a")
            end
          end

          on TbPinged, react_with(Record)
        end

        TCB.domain_modules = [TbReactions]
        TCB.configure do |c|
          c.event_bus = TCB::EventBus.new
          c.event_store = TCB::EventStore::InMemory.new
        end
      RUBY
      "config/routes.rb" => <<~RUBY
        Rails.application.routes.draw do
          get "/ping", to: ->(_env) { [200, { "Content-Type" => "text/plain" }, ["pong"]] }
          post "/tcb", to: lambda { |_env|
            TCB.publish(TbPinged.new(Process.pid))
            [200, { "Content-Type" => "text/plain" }, [Process.pid.to_s]]
          }
        end
      RUBY
    }
  end

  it "boots a preloaded app with a TCB bus without a bus thread in the master; workers run the reactions" do
    tcb_app_files.each { |path, content| File.write(File.join(app, path), content) }
    boot_threads = File.join(app, "boot_threads.txt")
    File.write(File.join(app, "config/puma.rb"), <<~RUBY, mode: "a")
      before_fork do
        names = Thread.list.reject { |t| t.equal?(Thread.main) }.map { |t| t.name || t.inspect }
        File.write(#{boot_threads.inspect}, names.join("\n"))
      end
    RUBY
    reactions = File.join(app, "reactions.txt")
    env = { "PORT" => free_port.to_s, "TCB_REACTIONS" => reactions }
    pid = start_puma(env)
    begin
      workers = Array.new(20) do
        Net::HTTP.post(URI("http://127.0.0.1:#{env['PORT']}/tcb"), "").body.to_i
      end
      expect(eventually(10) { File.exist?(reactions) && File.readlines(reactions).size == workers.size }).to be(true)
    ensure
      stop_puma(pid)
    end
    expect(File.read(boot_threads).lines.map(&:chomp)).not_to include("tcb-event-bus")
    # Puma lists the threads it found at boot (concurrent-ruby may leave one of its own).
    expect(File.readlines(File.join(app, "puma.log")).grep(/tcb-event-bus/)).to be_empty
    reacted = File.readlines(reactions).map { |line| line.split.map(&:to_i) }
    expect(reacted.map(&:first)).to match_array(workers), "each reaction ran in the worker that published it"
    expect(reacted.map(&:last)).to match_array(workers)
    expect(workers).not_to include(pid)
  end

  %w[sync async].each do |mode|
    it "mirrors every committed order exactly once (#{mode})" do
      database_url = TbackendSpec::Database.postgres_url("rails_puma")
      TbackendSpec::TestDaemon.with do |d|
        env = {
          "DATABASE_URL" => database_url, "TBACKEND_TEST_PORT" => d.port.to_s, "PORT" => free_port.to_s,
          "WARM_TBACKEND" => "1", "TBACKEND_ASYNC" => mode == "async" ? "1" : "0"
        }
        TbackendSpec::RailsApp.load_schema(app, env: env)
        pid = start_puma(env)
        begin
          created = hammer(env["PORT"])
        ensure
          stop_puma(pid)
        end
        expect(created.size).to be > 50
        expect(created.map { |o| o["pid"] }.uniq.size).to eq(2), "both workers served requests"

        client = client_for(d)
        committed_ids = TbackendSpec::Database.connect(:postgresql, database: "rails_puma")
                                              .select_values("SELECT id FROM orders").map(&:to_i)
        expect(committed_ids.size).to eq(created.size)
        facts = client.facts_by_seq(store: "orders", after_seq: 0, timeout: 10)[:response][:facts]
        expect(facts.map { |f| f[:id] }.tally.select { |_, n| n > 1 }).to be_empty, "a fact stored twice"
        mirrored_keys = facts.map { |f| f[:key] }
        expect(mirrored_keys).to match_array(committed_ids.map { |id| "orders:#{id}" })
      ensure
        ActsAsTbackend.reset!
      end
    end
  end
end
