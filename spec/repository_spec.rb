# frozen_string_literal: true

require "spec_helper"
require "open3"

# A plain clone is all a newcomer has: no test, comment or doc may lean on a folder beside
# the checkout. Everything the tests read lives in the repository (spec/fixtures/tbackend),
# and the protocol notes are in docs/protocol.md.
RSpec.describe "The repository" do
  root = File.expand_path("..", __dir__)

  # Tracked files, plus new ones not yet added (so the check bites before a commit); a copy
  # without .git (an exported tree) is walked instead, skipping what .gitignore ignores.
  files =
    begin
      out, status = Open3.capture2("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
      raise Errno::ENOENT, "git" unless status.success? && File.exist?(File.join(root, ".git"))

      out.split("\0").uniq.select { |path| File.file?(File.join(root, path)) }
    rescue Errno::ENOENT
      Dir.chdir(root) do
        Dir.glob("**/*", File::FNM_DOTMATCH).select { |path| File.file?(path) }
           .grep_v(%r{\A(?:\.git|target|tmp|vendor)/|\.(?:so|gem)\z|(?:\A|/)(?:Makefile|mkmf\.log)\z})
      end
    end
  texts = files.to_h { |path| [path, File.binread(File.join(root, path))] }
               .reject { |_, text| text.include?("\0") }
               .transform_values { |text| text.dup.force_encoding(Encoding::UTF_8).scrub }

  # Names of the material the repository was built from, outside it. Spelt in pieces so
  # this file does not trip its own check.
  outside = [
    %w[../ shared], %w[shared /tbackend], %w[/work /shared],
    %w[PROTOCOL .md], %w[CONNECTOR -CONTRACT], %w[TCB -CONTRACT], %w[NATIVE -RECIPE], %w[DEBIAN13 -RECIPE]
  ].map(&:join)

  it "has files to check" do
    expect(texts.keys).to include("README.md", "docs/protocol.md", "spec/fixtures/tbackend/transcripts.jsonl")
    expect(texts.size).to be > 200
  end

  it "names nothing kept outside it" do
    hits = texts.flat_map do |path, text|
      text.each_line.with_index(1).filter_map do |line, number|
        name = outside.find { |word| line.include?(word) }
        "#{path}:#{number}: #{name}" if name
      end
    end
    expect(hits).to eq([])
  end

  # A relative path climbs out of the checkout when it has more `..` than the directory it
  # is resolved from is deep. Rust resolves from the crate (CARGO_MANIFEST_DIR), so files
  # of crates/<name>/ are measured from there: the shallower base, the stricter check.
  it "has no relative path that climbs out of it" do
    hits = texts.flat_map do |path, text|
      base = path.match(%r{\Acrates/[^/]+/}) ? path.split("/").first(2) : path.split("/")[0...-1]
      text.scan(%r{(?:["'(\s]|\A)((?:\.\./)*\.\.)(?=[/"')\s])}).flatten.filter_map do |climb|
        levels = climb.count(".") / 2
        "#{path}: #{climb} climbs #{levels} from #{base.join('/').then { |b| b.empty? ? '.' : b }}" if levels > base.size
      end
    end
    expect(hits).to eq([])
  end

  it "links its Markdown only to files it has" do
    hits = texts.select { |path, _| path.end_with?(".md") }.flat_map do |path, text|
      text.scan(/\]\(([^)\s]+)\)/).flatten.filter_map do |link|
        next if link.match?(%r{\A(?:[a-z]+:|#|/)})

        target = File.expand_path(link.sub(/#.*/, ""), File.join(root, File.dirname(path)))
        "#{path}: #{link}" unless target.start_with?("#{root}/") && File.exist?(target)
      end
    end
    expect(hits).to eq([])
  end

  it "keeps the recorded vectors out of the gem" do
    spec = Gem::Specification.load(File.join(root, "acts_as_tbackend.gemspec"))
    expect(spec.files).not_to include(a_string_starting_with("spec/"))
    expect(spec.files).to include("README.md", "ext/acts_as_tbackend/extconf.rb")
  end
end
