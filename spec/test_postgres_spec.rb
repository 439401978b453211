# frozen_string_literal: true

require "spec_helper"
require "fileutils"
require "open3"
require "socket"
require "tmpdir"

# As root, the PostgreSQL server runs as "postgres", which cannot enter a checkout under a
# 0700 directory (/root/src/..., any `mktemp -d`). bin/test-postgres must still start a
# cluster there that belongs to that checkout, is reused between runs and stops.
RSpec.describe "bin/test-postgres" do
  bindir = Dir["/usr/lib/postgresql/*/bin"].max_by { |dir| dir[%r{/(\d+)/bin\z}, 1].to_i }
  let(:script) { File.expand_path("../bin/test-postgres", __dir__) }
  let(:pg_bindir) { bindir }

  before do
    skip "needs root: the failure is the postgres user not reaching a root-only directory" unless Process.uid.zero?
    skip "needs PostgreSQL's server binaries (apt-get install postgresql)" unless bindir && File.executable?("#{bindir}/initdb")
  end

  around do |example|
    Dir.mktmpdir("test-postgres") do |dir|
      @private_dir = dir
      @checkouts = []
      example.run
    ensure
      @checkouts.each do |checkout, port|
        run_script(checkout, "stop", port: port)
        link = File.join(checkout, "tmp", "postgres-cluster")
        FileUtils.rm_rf(File.readlink(link)) if File.symlink?(link)
      end
    end
  end

  # A checkout of the script alone: it needs nothing else of the repository.
  def checkout(name, port)
    dir = File.join(@private_dir, name)
    FileUtils.mkdir_p(File.join(dir, "bin"))
    FileUtils.cp(script, File.join(dir, "bin"), preserve: true)
    @checkouts << [dir, port]
    dir
  end

  def run_script(checkout, *args, port:)
    Open3.capture3({ "TBACKEND_PG_PORT" => port.to_s }, File.join(checkout, "bin", "test-postgres"), *args)
  end

  def start(checkout, port)
    out, err, status = run_script(checkout, port: port)
    expect(status).to be_success, "bin/test-postgres failed:\n#{err}"
    out.lines.last.strip
  end

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  def serving?(port)
    system("#{pg_bindir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", port.to_s)
  end

  def query(url, sql)
    require "pg"
    conn = PG.connect(url)
    conn.exec(sql).values
  ensure
    conn&.close
  end

  it "runs a cluster for a checkout under a 0700 directory, keeps it between runs and stops it" do
    expect(File.stat(@private_dir).mode & 0o777).to eq(0o700)
    port = free_port
    dir = checkout("app", port)

    url = start(dir, port)
    expect(url).to eq("postgres://postgres@127.0.0.1:#{port}/acts_as_tbackend_test")
    cluster = File.readlink(File.join(dir, "tmp", "postgres-cluster"))
    expect(cluster).to match(%r{\A/(?:var/)?tmp/acts_as_tbackend-pg-\h{16}\z})
    expect(File.stat(cluster)).to have_attributes(uid: Etc.getpwnam("postgres").uid, mode: 0o40700)
    query(url, "CREATE TABLE kept (n integer); INSERT INTO kept VALUES (42)")

    expect(run_script(dir, "stop", port: port).last).to be_success
    expect(serving?(port)).to be(false)

    expect(start(dir, port)).to eq(url)
    expect(File.readlink(File.join(dir, "tmp", "postgres-cluster"))).to eq(cluster)
    expect(query(url, "SELECT n FROM kept")).to eq([["42"]])

    expect(run_script(dir, "stop", port: port).last).to be_success
    expect(serving?(port)).to be(false)
  end

  it "refuses a port that another checkout's cluster serves" do
    port = free_port
    first = checkout("first", port)
    second = checkout("second", port)
    url = start(first, port)

    _, err, status = run_script(second, port: port)
    expect(status).not_to be_success
    expect(err).to include("port #{port} is served by another cluster")
    expect(query(url, "SELECT 40 + 2")).to eq([["42"]])
  end
end
