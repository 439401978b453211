# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/test_helpers"
require "acts_as_tbackend/tcb"
require "acts_as_tbackend/tcb/event_store/tbackend"

# Issue 12, "The status table, once": one table in tbackend-core says what each status
# means; Ruby reads it as ActsAsTbackend::STATUSES and derives every list from it, and
# every soft result carries its error kind.
RSpec.describe "ActsAsTbackend::STATUSES" do
  include_context "client spec"

  let(:statuses) { ActsAsTbackend::STATUSES }
  let(:client_class) { ActsAsTbackend::Client }

  def statuses_where(column)
    statuses.select { |_, row| row[column] }.keys
  end

  # The row's flags and kind, as a result carries them.
  def row_of(status)
    statuses.fetch(status).slice(:ok, :committed, :retryable, :error_kind)
  end

  # Its row's flags and kind; a success has the 0.2 gem's six keys, a failure adds
  # error_kind.
  def expect_as_the_table_says(result)
    flags = { ok: result[:ok], committed: result[:committed], retryable: result[:retryable],
              error_kind: result[:error_kind] }
    expect(flags).to eq(row_of(result[:status])), result.inspect
    keys = %i[ok status committed retryable response error]
    expect(result.keys).to contain_exactly(*keys, *(:error_kind unless result[:ok])), result.inspect
  end

  it "names every status a result can carry, frozen, each row frozen with the same columns" do
    expect(statuses.keys).to contain_exactly(
      "committed_acked", "idempotent_replay", "rejected_before_commit", "duplicate_fact_id_conflict", "error", "ok",
      "unavailable", "timeout_unknown", "circuit_open", "disabled", "config_error", "enqueued", "queue_full", "dropped"
    )
    expect(statuses).to be_frozen
    expect(statuses.keys).to all(be_frozen)
    statuses.each_value do |row|
      expect(row).to be_frozen
      expect(row.keys).to eq(%i[ok committed retryable transport retry_safe error_kind])
    end
    expect(statuses["timeout_unknown"]).to eq(ok: false, committed: nil, retryable: nil, transport: true,
                                              retry_safe: true, error_kind: "outcome_unknown")
    expect(statuses["queue_full"]).to include(ok: false, committed: false, retryable: true, transport: false,
                                              retry_safe: true)
  end

  it "is where every Ruby status list comes from" do
    expect(client_class::TRANSPORT_STATUSES).to eq(statuses_where(:transport))
    expect(client_class::TRANSPORT_STATUSES).to contain_exactly("unavailable", "timeout_unknown", "circuit_open")
    expect(client_class::RETRY_SAFE_STATUSES).to eq(statuses_where(:retry_safe))
    expect(client_class::TRANSPORT_ERRORS).to eq(
      "unavailable" => ActsAsTbackend::ConnectionError, "timeout_unknown" => ActsAsTbackend::TimeoutError,
      "circuit_open" => ActsAsTbackend::CircuitOpenError
    )
    expect(client_class::DISABLED).to eq(client_class.result("disabled"))
    expect_as_the_table_says(client_class::DISABLED)
    expect(ActsAsTbackend::TestHelpers::FakeClient::DEFAULTS)
      .to eq(statuses.transform_values { |row| row.values_at(:ok, :committed, :retryable) })
    expect(ActsAsTbackend::OutboxFlusher::RETRYABLE_STATUSES).to eq(statuses_where(:retry_safe) - %w[timeout_unknown])
    expect(TCB::EventStore::TBackend::Ledger::STORED_STATUSES).to contain_exactly("committed_acked", "idempotent_replay")
    expect(TCB::EventStore::TBackend::Ledger::STORED_STATUSES).to eq(statuses_where(:committed))
  end

  describe "results from a daemon" do
    with_daemon

    it "carry their row's flags and error kind" do
      client = client_for(daemon)
      one = fact(unique)
      expect_as_the_table_says(client.ping)
      expect_as_the_table_says(client.write_fact_once(one))
      expect(client.write_fact_once(one)).to include(status: "idempotent_replay")
      expect_as_the_table_says(client.write_fact_once(one))
      conflict = client.write_fact_once(one.merge("value" => { "other" => true }))
      expect(conflict).to include(status: "duplicate_fact_id_conflict", error_kind: "conflict")
      expect_as_the_table_says(conflict)
      expect_as_the_table_says(client.latest_for(store: "specs", key: one["key"]))
    end
  end

  describe "results without a daemon answer" do
    it "carry their row's flags and error kind: unavailable, circuit_open, config_error" do
      client = ActsAsTbackend::Client.new(config_with(port: closed_port, breaker_threshold: 1))
      refused = client.ping
      expect(refused).to include(status: "unavailable", error_kind: "not_applied")
      expect_as_the_table_says(refused)
      expect_as_the_table_says(client.ping.tap { |r| expect(r[:status]).to eq("circuit_open") })
      client.shutdown

      broken = ActsAsTbackend::Client.new(ActsAsTbackend::Config.from_env({ "TBACKEND_PORT" => "abc" }))
      expect(broken.ping).to include(status: "config_error", error_kind: "config")
      expect_as_the_table_says(broken.ping)
    end

    it "say what an invalid value is: a client_bug error, not committed, not retryable" do
      client = ActsAsTbackend::Client.new(config_with(port: closed_port))
      result = client.write_fact_once(fact(unique).merge("value" => { "x" => Float::NAN }))
      expect(result).to include(ok: false, status: "error", committed: false, retryable: false,
                                error_kind: "client_bug")
      client.shutdown
    end
  end

  it "gives the result of an exception that stands for a failed call the kind of that exception" do
    kinds = {
      ActsAsTbackend::InvalidFact.new("x") => "client_bug", TypeError.new("x") => "client_bug",
      ActsAsTbackend::ConfigurationError.new("x") => "config", ActsAsTbackend::InternalError.new("x") => "other",
      ActsAsTbackend::ConnectionError.new("x") => "not_applied", ActsAsTbackend::CircuitOpenError.new("x") => "not_applied",
      ActsAsTbackend::TimeoutError.new("x") => "outcome_unknown"
    }
    kinds.each do |exception, kind|
      expect(client_class.error_result(exception, nil)).to include(status: "error", error_kind: kind), exception.inspect
    end
    strict = ActsAsTbackend::TimeoutError.new("x", result: client_class.result("unavailable"))
    expect(client_class.error_result(strict, nil)[:error_kind]).to eq("not_applied")
  end

  describe "the async writer's results" do
    with_daemon

    def async_writer(**settings)
      ActsAsTbackend.configure do |c|
        c.port = daemon.port
        settings.each { |name, value| c.public_send(:"#{name}=", value) }
      end
      ActsAsTbackend.async_writer
    end

    it "carry their row's flags and error kind: enqueued, disabled, config_error" do
      writer = async_writer
      expect_as_the_table_says(writer.enqueue(fact(unique)))
      expect(writer.flush(timeout: 10)).to be(true)

      expect_as_the_table_says(async_writer(enabled: false).enqueue(fact(unique)))

      Dir.mktmpdir do |dir|
        file = File.join(dir, "a-file")
        File.write(file, "")
        result = async_writer(enabled: true, spool_path: File.join(file, "spool")).enqueue(fact(unique))
        expect(result).to include(status: "config_error", error_kind: "config")
        expect_as_the_table_says(result)
      end
    end
  end

  it "a refused token's result says auth, and health reads that kind instead of the error text" do
    TbackendSpec::TestDaemon.with(auth: true) do |d|
      client = client_for(d, token: "wrong-token-#{SecureRandom.hex(4)}")
      result = client.ping
      expect(result).to include(status: "error", error_kind: "auth")
      expect(client.health).to include(ok: false, status: "auth_error")
    end
  end
end
