# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/test_helpers"
require_relative "support/mirror_models"

# The macro against real databases and the real test daemon: what reaches the ledger for
# each committed change, and nothing for what is rolled back.
RSpec.describe "acts_as_tbackend: lifecycle and transactions" do
  TbackendSpec::MirrorModels::ADAPTERS.each do |adapter_name|
    context "on #{adapter_name}" do
      let(:adapter) { adapter_name }
      include_context "mirror model spec"

      it "mirrors create, update and destroy (a tombstone) with 0.2 ids, keys and causation" do
        order = models::Order.create!(status: "new", total: 5)
        created_at = order.updated_at
        order.update!(status: "paid")
        paid_at = order.updated_at
        order.destroy!

        facts = facts_in("mirror_orders")
        usec = ->(time) { (time.to_r * 1_000_000).to_i }
        expect(facts.map { |f| f[:id] }).to eq(
          ["mirror_orders:#{order.id}:create:#{usec[created_at]}",
           "mirror_orders:#{order.id}:update:#{usec[paid_at]}",
           "mirror_orders:#{order.id}:destroy:#{usec[paid_at]}"]
        )
        expect(facts.map { |f| f[:key] }.uniq).to eq(["mirror_orders:#{order.id}"])
        expect(facts.map { |f| f[:causation] }).to eq(%w[create update destroy].map { |e| "mirror_orders:#{order.id}:#{e}" })
        expect(facts[0][:value]).to include(id: order.id, status: "new", total: 5)
        expect(facts[1][:value]).to include(status: "paid")
        expect(facts[2][:value]).to eq(_tombstone: true)
        expect(facts.map { |f| f[:producer] }.uniq).to eq(["acts-as-tbackend"])
      end

      it "mirrors nothing for a save that changed nothing, and an update for a touch" do
        order = models::Order.create!(status: "new")
        order.save!
        models::Order.find(order.id).save!
        expect(event_types("mirror_orders")).to eq(%w[create])
        order.touch
        expect(event_types("mirror_orders")).to eq(%w[create update])
      end

      it "mirrors nothing of a rolled-back transaction" do
        models::Order.transaction do
          models::Order.create!(status: "new")
          raise ActiveRecord::Rollback
        end
        expect do
          models::Order.transaction do
            models::Order.create!(status: "new").update!(status: "x")
            raise "app error"
          end
        end.to raise_error("app error")
        order = models::Order.create!(status: "kept")
        models::Order.transaction do
          order.destroy!
          raise ActiveRecord::Rollback
        end
        expect(models::Order.count).to eq(1)
        expect(event_types("mirror_orders")).to eq(%w[create])
      end

      it "writes only after the outermost transaction commits, once, with nested transactions" do
        seen_inside = nil
        models::Order.transaction do
          models::Order.transaction do
            models::Order.create!(status: "inner")
          end
          models::Order.create!(status: "outer")
          seen_inside = facts_in("mirror_orders").size
        end
        expect(seen_inside).to eq(0)
        expect(facts_in("mirror_orders").map { |f| f[:value][:status] }).to eq(%w[inner outer])
      end

      it "drops the changes of a rolled-back requires_new savepoint and keeps the rest" do
        kept = models::Order.create!(status: "kept")
        models::Order.transaction do
          kept.update!(status: "kept-2")
          models::Order.transaction(requires_new: true) do
            models::Order.create!(status: "savepoint")
            kept.update!(status: "savepoint-update")
            raise ActiveRecord::Rollback
          end
          models::Order.transaction(requires_new: true) do
            models::Order.create!(status: "released")
          end
          models::Order.create!(status: "after")
        end
        statuses = facts_in("mirror_orders").map { |f| [f[:causation].split(":").last, f[:value][:status]] }
        expect(statuses).to eq([%w[create kept], %w[update kept-2], %w[create released], %w[create after]])
        expect(models::Order.pluck(:status)).to contain_exactly("kept-2", "released", "after")
      end

      it "drops a released savepoint's changes when the outer transaction rolls back" do
        models::Order.transaction do
          models::Order.transaction(requires_new: true) { models::Order.create!(status: "released") }
          raise ActiveRecord::Rollback
        end
        expect(facts_in("mirror_orders")).to eq([])
      end

      it "records each committed change of a transaction, with the state it had when saved" do
        order = nil
        models::Order.transaction do
          order = models::Order.create!(status: "a")
          order.update!(status: "b")
          order.update!(status: "c")
        end
        expect(facts_in("mirror_orders").map { |f| [f[:causation].split(":").last, f[:value][:status]] })
          .to eq([%w[create a], %w[update b], %w[update c]])
      end

      it "mirrors every committed change exactly once (counted in the daemon)" do
        orders = models::Order.transaction { Array.new(10) { |i| models::Order.create!(status: "n#{i}") } }
        orders.each_slice(2) { |pair| models::Order.transaction { pair.each { |o| o.update!(status: "u") } } }
        orders.first(3).each(&:destroy!)
        facts = facts_in("mirror_orders")
        expect(facts.size).to eq(10 + 10 + 3)
        expect(facts.map { |f| f[:id] }.uniq.size).to eq(facts.size)
        expect(event_types("mirror_orders").tally).to eq("create" => 10, "update" => 10, "destroy" => 3)
      end

      it "mirrors at the end of each save inside a non-joinable transaction (transactional tests)" do
        connection = ActiveRecord::Base.connection
        connection.begin_transaction(joinable: false)
        begin
          models::Order.create!(status: "in a test")
          expect(event_types("mirror_orders")).to eq(%w[create])
        ensure
          connection.rollback_transaction
        end
      end

      it "still writes its change when another record's after_commit raises first" do
        expect do
          models::Order.transaction do
            models::Bomb.create!(body: "x")
            models::Order.create!(status: "committed anyway")
          end
        end.to raise_error("after_commit bug")
        expect(facts_in("mirror_orders").map { |f| f[:value][:status] }).to eq(["committed anyway"])
      end

      it "does not force valid_time on models" do
        models::Order.create!(status: "x")
        expect(facts_in("mirror_orders").first[:valid_time]).to be_nil
      end

      it "sends nothing while the connector is disabled (read live)" do
        ActsAsTbackend.config.enabled = false
        models::Order.create!(status: "off")
        ActsAsTbackend.config.enabled = true
        models::Order.transaction do
          ActsAsTbackend.config.enabled = false
          models::Order.create!(status: "off at save")
          ActsAsTbackend.config.enabled = true
        end
        models::Order.transaction do
          models::Order.create!(status: "off at commit")
          ActsAsTbackend.config.enabled = false
        end
        ActsAsTbackend.config.enabled = true
        models::Order.create!(status: "on")
        expect(facts_in("mirror_orders").map { |f| f[:value][:status] }).to eq(["on"])
      end

      context "with a record without updated_at" do
        it "derives idempotent ids from the content: a re-mirror of the same change is a replay" do
          note = models::Note.create!(body: "hello")
          fact = facts_in("notes").first
          digest = Digest::SHA256.hexdigest(%({"body":"hello","id":#{note.id}}))
          expect(fact[:id]).to eq("notes:#{note.id}:create:#{digest}")
          expect(note.mirror_tbackend(event_type: "create")[:status]).to eq("idempotent_replay")
          note.update!(body: "changed")
          expect(facts_in("notes").map { |f| f[:id] }.uniq.size).to eq(2)
        end
      end

      context "with options" do
        it "only / except" do
          models::OnlyOrder.create!(status: "s", total: 1)
          models::ExceptOrder.create!(status: "s", total: 1)
          expect(facts_in("orders_only").first[:value].keys).to eq(%i[id status])
          expect(facts_in("orders_except").first[:value].keys).to contain_exactly(:id, :status)
        end

        it "denylist: true drops the default list; an Array applies after `only`" do
          models::Account.create!(email: "a@b", password: "pw", api_key: "k", token: "t")
          models::EmailDeniedAccount.create!(email: "a@b", password: "pw")
          expect(facts_in("accounts").first[:value].keys).to contain_exactly(:id, :email, :created_at, :updated_at)
          expect(facts_in("accounts_listed").first[:value].keys).to contain_exactly(:id, :password)
        end

        it "a custom key: a proc of the record, or a method name" do
          widget = models::Widget.create!(sku: "A-1")
          models::KeyedWidget.create!(sku: "B-2")
          expect(facts_in("widgets").map { |f| f[:key] }).to eq(["widget:A-1"])
          expect(facts_in("widgets").first[:causation]).to eq("widgets:#{widget.id}:create")
          expect(facts_in("widgets_keyed").map { |f| f[:key] }).to eq(["sku/B-2"])
        end

        it "if: / unless: decide per change" do
          widget = models::Widget.create!(sku: "A", mirrored: false)
          widget.update!(mirrored: true)
          widget.update!(archived: true)
          widget.update!(sku: "A2")
          expect(facts_in("widgets").map { |f| [f[:causation].split(":").last, f[:value][:archived]] })
            .to eq([["update", false]])
        end

        it "durability: is passed to the client" do
          ActsAsTbackend::TestHelpers.stub_client do |fake|
            models::DurableOrder.create!(status: "d")
            models::Order.create!(status: "o")
            expect(fake.calls.map { |c| [c[:args].first["store"], c[:kwargs][:durability]] })
              .to eq([%w[orders_durable durable], ["mirror_orders", nil]])
          end
        end

        it "a subclass that declares the macro again writes to its own store, once" do
          models::SpecialOrder.create!(status: "vip")
          models::Order.create!(status: "plain")
          expect(facts_in("special_orders").map { |f| f[:value][:status] }).to eq(["vip"])
          expect(facts_in("mirror_orders").map { |f| f[:value][:status] }).to eq(["plain"])
        end
      end
    end
  end
  # PostgreSQL only: SQLite's in-memory database is one per connection, so threads on
  # their own connections would not share the table.
  context "with threads, each on its own connection (postgresql)" do
    let(:adapter) { :postgresql }
    include_context "mirror model spec"

    it "mirrors every committed change exactly once" do
      threads = Array.new(8) do |t|
        Thread.new do
          ActiveRecord::Base.connection_pool.with_connection do
            Array.new(15) do |i|
              order = models::Order.create!(status: "t#{t}-#{i}")
              models::Order.transaction { order.update!(status: "u#{t}-#{i}") }
              order
            end
          end
        end
      end
      orders = join_all(threads, 60).flatten
      facts = facts_in("mirror_orders")
      expect(facts.size).to eq(orders.size * 2)
      expect(facts.map { |f| f[:id] }.uniq.size).to eq(facts.size)
      expect(facts.group_by { |f| f[:key] }.transform_values(&:size).values.uniq).to eq([2])
    end
  end
end
