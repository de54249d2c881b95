// The input deck reader: defaults, every key, overrides, and one message per mistake that
// names the key, the value, where it was written and what would be valid.

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "moeproxy/io/deck.hpp"

using moeproxy::InputError;
using moeproxy::RunConfig;
using moeproxy::io::parse_deck;
using Catch::Matchers::Contains;

namespace {

RunConfig parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return parse_deck(text, "decks/x.toml", overrides);
}

// The message of the InputError that parsing throws; fails the test when nothing is thrown.
std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse(text, overrides);
  } catch (const InputError& e) {
    return e.what();
  }
  FAIL("expected an InputError for deck:\n" << text);
  return {};
}

const char* const kFullDeck = R"([model]
layers = 4
hidden = 4096
heads = 32
head_dim = 128
kv_heads = 8
ffn = "moe"
ffn_hidden = 16384
experts = 16
top_k = 2
renormalize = false
activation = "gelu"
norm = "layernorm"
rope = true
rope_theta = 500000.0
norm_eps = 1e-6
capacity_factor = 1.25
precision = "fp16"
seed = 42
checkpoint = "weights.h5"

[workload]
batch = 8
prompt = 2048
decode_steps = 16
routing = "uniform"

[parallel]
dp = 2
tp = 8
pp = 2
ep = 4
attn_ranks = 8
head_groups = 4
dim_groups = 2
micro_batches = 4
comm = "nccl"

[output]
file = "results/full.h5"
dump_hidden = true

[verify]
mode = "file"
sample = 3
file = "results/serial.h5"
)";

}  // namespace

TEST_CASE("deck: an empty deck gives the defaults of config.hpp", "[deck]") {
  const RunConfig c = parse("");
  const RunConfig d;
  CHECK(c.model.layers == d.model.layers);
  CHECK(c.model.hidden == d.model.hidden);
  CHECK(c.model.ffn == d.model.ffn);
  CHECK(c.model.seed == d.model.seed);
  CHECK(c.model.rope_theta == d.model.rope_theta);
  CHECK(c.workload.routing == d.workload.routing);
  CHECK(c.parallel.comm == d.parallel.comm);
  CHECK(c.output.file == d.output.file);
  CHECK(c.verify.mode == d.verify.mode);
  CHECK(c.verify.sample == d.verify.sample);
  CHECK(c.deck_path == "decks/x.toml");
  CHECK(c.deck_text.empty());
}

TEST_CASE("deck: every key of a full deck is read", "[deck]") {
  const RunConfig c = parse(kFullDeck);
  const auto& m = c.model;
  CHECK(m.layers == 4);
  CHECK(m.hidden == 4096);
  CHECK(m.heads == 32);
  CHECK(m.head_dim == 128);
  CHECK(m.kv_heads == 8);
  CHECK(m.ffn == moeproxy::FfnKind::moe);
  CHECK(m.ffn_hidden == 16384);
  CHECK(m.experts == 16);
  CHECK(m.top_k == 2);
  CHECK_FALSE(m.renormalize);
  CHECK(m.activation == moeproxy::Activation::gelu);
  CHECK(m.norm == moeproxy::NormKind::layernorm);
  CHECK(m.rope);
  CHECK(m.rope_theta == 500000.0);
  CHECK(m.norm_eps == 1e-6);
  CHECK(m.capacity_factor == 1.25);
  CHECK(m.precision == moeproxy::Precision::fp16);
  CHECK(m.seed == 42u);
  CHECK(m.checkpoint == "weights.h5");
  CHECK(c.workload.batch == 8);
  CHECK(c.workload.prompt == 2048);
  CHECK(c.workload.decode_steps == 16);
  CHECK(c.workload.routing == moeproxy::RoutingMode::uniform);
  CHECK(c.parallel.dp == 2);
  CHECK(c.parallel.tp == 8);
  CHECK(c.parallel.pp == 2);
  CHECK(c.parallel.ep == 4);
  CHECK(c.parallel.attn_ranks == 8);
  CHECK(c.parallel.head_groups == 4);
  CHECK(c.parallel.dim_groups == 2);
  CHECK(c.parallel.micro_batches == 4);
  CHECK(c.parallel.comm == moeproxy::CommBackend::nccl);
  CHECK(c.output.file == "results/full.h5");
  CHECK(c.output.dump_hidden);
  CHECK(c.verify.mode == moeproxy::VerifyMode::file);
  CHECK(c.verify.sample == 3);
  CHECK(c.verify.file == "results/serial.h5");
  CHECK(c.deck_text == kFullDeck);
}

TEST_CASE("deck: enum names round-trip through to_string", "[deck]") {
  using namespace moeproxy;
  CHECK(std::string(to_string(FfnKind::dense)) == "dense");
  CHECK(std::string(to_string(Activation::swiglu)) == "swiglu");
  CHECK(std::string(to_string(NormKind::rmsnorm)) == "rmsnorm");
  CHECK(std::string(to_string(Precision::fp16)) == "fp16");
  CHECK(std::string(to_string(CommBackend::automatic)) == "auto");
  CHECK(std::string(to_string(VerifyMode::reference)) == "reference");
  CHECK(to_string(RoutingMode::learned, 1.2) == "learned");
  const RunConfig c = parse(R"([model]
ffn = "dense"
activation = "swiglu"
norm = "rmsnorm"
precision = "fp32"
[parallel]
comm = "mpi"
[verify]
mode = "none"
)");
  CHECK(std::string(to_string(c.model.ffn)) == "dense");
  CHECK(std::string(to_string(c.parallel.comm)) == "mpi");
  CHECK(std::string(to_string(c.verify.mode)) == "none");
}

TEST_CASE("deck: zipf routing carries its exponent", "[deck]") {
  const RunConfig c = parse("[workload]\nrouting = \"zipf:1.2\"\n");
  CHECK(c.workload.routing == moeproxy::RoutingMode::zipf);
  CHECK(c.workload.zipf_exponent == 1.2);
  CHECK(moeproxy::to_string(c.workload.routing, c.workload.zipf_exponent) == "zipf:1.2");
  CHECK(moeproxy::to_string(moeproxy::RoutingMode::zipf, 2.0) == "zipf:2");
  CHECK(parse("[workload]\nrouting = \"zipf:0.75\"\n").workload.zipf_exponent == 0.75);
}

TEST_CASE("deck: bad zipf exponents are rejected", "[deck]") {
  for (const char* bad : {"zipf:0", "zipf:-1", "zipf:", "zipf:abc", "zipf:1.2x", "zipf:inf"}) {
    INFO(bad);
    const std::string msg = error_of(std::string("[workload]\nrouting = \"") + bad + "\"\n");
    CHECK_THAT(msg, Contains("workload.routing") && Contains(bad) &&
                        Contains("decks/x.toml:2:1") && Contains("> 0"));
  }
  CHECK_THAT(error_of("[workload]\nrouting = \"skewed\"\n"),
             Contains("\"skewed\"") && Contains("\"learned\"") && Contains("\"uniform\"") &&
                 Contains("zipf:<exponent>"));
}

TEST_CASE("deck: integers are accepted where floats are expected", "[deck]") {
  const RunConfig c = parse("[model]\ncapacity_factor = 2\nrope_theta = 10000\nnorm_eps = 1\n");
  CHECK(c.model.capacity_factor == 2.0);
  CHECK(c.model.rope_theta == 10000.0);
  CHECK(c.model.norm_eps == 1.0);
  CHECK(parse({}, {"model.capacity_factor=3"}).model.capacity_factor == 3.0);
}

TEST_CASE("deck: malformed TOML names file, line, column and the problem", "[deck]") {
  CHECK_THAT(error_of("[model]\nlayers = \n"),
             Contains("decks/x.toml:2:10") && Contains("invalid TOML") &&
                 Contains("expected value"));
  CHECK_THAT(error_of("[model]\nlayers = 1\nlayers = 2\n"),
             Contains("decks/x.toml:3:") && Contains("layers"));
}

TEST_CASE("deck: an unknown key suggests the nearest valid one", "[deck]") {
  CHECK(error_of("[model]\nlayers = 2\nhiden = 64\n") ==
        "unknown key model.hiden at decks/x.toml:3:1; did you mean model.hidden?");
  CHECK_THAT(error_of("[model]\nbatch = 2\n"), Contains("did you mean workload.batch?"));
  CHECK_THAT(error_of("[parallel]\ntp_degree_size = 2\n"),
             Contains("parallel.tp_degree_size") && Contains("valid keys in [parallel]") &&
                 Contains("micro_batches"));
  CHECK_THAT(error_of("layers = 2\n"),
             Contains("outside any section") && Contains("did you mean model.layers?"));
}

TEST_CASE("deck: an unknown section suggests the nearest valid one", "[deck]") {
  CHECK_THAT(error_of("[model]\nlayers = 2\n\n[modle]\nhidden = 64\n"),
             Contains("unknown section [modle]") && Contains("decks/x.toml:4:1") &&
                 Contains("did you mean [model]?"));
  CHECK_THAT(error_of("[network]\nx = 1\n"),
             Contains("[network]") && Contains("[model], [workload], [parallel]"));
  CHECK_THAT(error_of("model = 3\n"),
             Contains("model = 3") && Contains("expected a [model] table"));
}

TEST_CASE("deck: a value of the wrong type names key, value and location", "[deck]") {
  CHECK(error_of("[model]\nlayers = \"four\"\n") ==
        "model.layers = \"four\" at decks/x.toml:2:1: expected an integer, got a string");
  CHECK_THAT(error_of("[model]\nlayers = 4.0\n"),
             Contains("model.layers = 4.0") && Contains("expected an integer"));
  CHECK_THAT(error_of("[model]\nrope = 1\n"),
             Contains("model.rope = 1") && Contains("expected a boolean"));
  CHECK_THAT(error_of("[model]\ncapacity_factor = \"high\"\n"),
             Contains("model.capacity_factor") && Contains("expected a number"));
  CHECK_THAT(error_of("[output]\nfile = 3\n"),
             Contains("output.file = 3") && Contains("expected a string"));
  CHECK_THAT(error_of("[model]\ncapacity_factor = nan\n"),
             Contains("model.capacity_factor = nan") && Contains("finite"));
}

TEST_CASE("deck: an enum value outside the allowed list lists the allowed ones", "[deck]") {
  CHECK(error_of("[model]\nffn = \"sparse\"\n") ==
        "model.ffn = \"sparse\" at decks/x.toml:2:1: expected one of \"dense\" | \"moe\"");
  CHECK_THAT(error_of("[model]\nprecision = \"bf16\"\n"),
             Contains("model.precision = \"bf16\"") && Contains("\"fp32\" | \"fp16\""));
  CHECK_THAT(error_of("[parallel]\ncomm = \"gloo\"\n"),
             Contains("\"auto\" | \"nccl\" | \"mpi\""));
  CHECK_THAT(error_of("[verify]\nmode = \"exact\"\n"),
             Contains("\"auto\" | \"reference\" | \"file\" | \"none\""));
  CHECK_THAT(error_of("[model]\nnorm = 2\n"),
             Contains("model.norm = 2") && Contains("\"layernorm\" | \"rmsnorm\""));
}

TEST_CASE("deck: out-of-range integers name the valid range", "[deck]") {
  struct Case {
    const char* deck;
    const char* expect;
  };
  const Case cases[] = {
      {"[model]\nlayers = 0\n", "model.layers = 0 at decks/x.toml:2:1: must be between 1 and"},
      {"[model]\nlayers = 100001\n", "must be between 1 and 100000"},
      {"[model]\nhidden = 4294967296\n", "model.hidden = 4294967296"},
      {"[model]\nheads = -2\n", "model.heads = -2"},
      {"[model]\nffn_hidden = 0\n", "model.ffn_hidden = 0"},
      {"[model]\nhead_dim = -1\n", "model.head_dim = -1"},
      {"[model]\nkv_heads = -1\n", "model.kv_heads = -1"},
      {"[model]\nseed = -5\n", "model.seed = -5"},
      {"[workload]\nbatch = 0\n", "workload.batch = 0"},
      {"[workload]\nprompt = 0\n", "workload.prompt = 0"},
      {"[workload]\ndecode_steps = -1\n", "workload.decode_steps = -1"},
      {"[parallel]\ndp = 0\n", "parallel.dp = 0"},
      {"[parallel]\nmicro_batches = 0\n", "parallel.micro_batches = 0"},
      {"[parallel]\nattn_ranks = -1\n", "parallel.attn_ranks = -1"},
      {"[verify]\nsample = -1\n", "verify.sample = -1"},
  };
  for (const Case& c : cases) {
    INFO(c.deck);
    CHECK_THAT(error_of(c.deck), Contains(c.expect) && Contains("must be"));
  }
  CHECK_THAT(error_of("[model]\ncapacity_factor = -0.5\n"),
             Contains("model.capacity_factor = -0.5") && Contains(">= 0.0"));
  CHECK_THAT(error_of("[model]\nnorm_eps = 0\n"),
             Contains("model.norm_eps = 0") && Contains("> 0.0"));
  CHECK(parse("[workload]\ndecode_steps = 0\n[verify]\nsample = 0\n").workload.decode_steps == 0);
}

TEST_CASE("deck: head, expert and verify combinations are checked", "[deck]") {
  CHECK_THAT(error_of("[model]\nhidden = 100\nheads = 3\n"),
             Contains("model.hidden = 100 at decks/x.toml:2:1") &&
                 Contains("model.heads = 3 at decks/x.toml:3:1") && Contains("not divisible"));
  CHECK(parse("[model]\nhidden = 100\nheads = 3\nhead_dim = 32\n").model.q_width() == 96);
  CHECK_THAT(error_of("[model]\nheads = 32\nkv_heads = 5\nhidden = 4096\n"),
             Contains("model.kv_heads = 5") && Contains("does not divide model.heads = 32"));
  CHECK_THAT(error_of("[model]\nhead_dim = 63\n"),
             Contains("model.head_dim = 63") && Contains("model.rope = true (default)") &&
                 Contains("even"));
  CHECK(parse("[model]\nhead_dim = 63\nrope = false\n").model.head_dim == 63);
  CHECK_THAT(error_of("[model]\nexperts = 0\n"),
             Contains("model.experts = 0") && Contains("model.ffn = \"moe\" (default)"));
  CHECK_THAT(error_of("[model]\nexperts = 4\ntop_k = 5\n"),
             Contains("model.top_k = 5 at decks/x.toml:3:1") &&
                 Contains("between 1 and model.experts = 4"));
  CHECK(parse("[model]\nffn = \"dense\"\nexperts = 0\ntop_k = 0\n").model.experts == 0);
  CHECK_THAT(error_of("[verify]\nmode = \"file\"\n"),
             Contains("verify.mode = \"file\"") && Contains("needs verify.file"));
  CHECK_THAT(error_of("[workload]\nbatch = 1048576\nprompt = 16777216\n"),
             Contains("workload.batch = 1048576") && Contains("tokens"));
}

TEST_CASE("deck: --set overrides win over the file and are recorded", "[deck]") {
  const RunConfig c = parse("[model]\nlayers = 4\nffn = \"moe\"\n",
                            {"model.layers=8", "model.ffn=dense", "parallel.tp=2",
                             "workload.routing=zipf:1.5", "output.file=runs/a.h5",
                             "verify.file = \"ref.h5\"", "model.layers=6"});
  CHECK(c.model.layers == 6);
  CHECK(c.model.ffn == moeproxy::FfnKind::dense);
  CHECK(c.parallel.tp == 2);
  CHECK(c.workload.routing == moeproxy::RoutingMode::zipf);
  CHECK(c.workload.zipf_exponent == 1.5);
  CHECK(c.output.file == "runs/a.h5");
  CHECK(c.verify.file == "ref.h5");
  CHECK(parse({}, {"model.ffn=\"dense\""}).model.ffn == moeproxy::FfnKind::dense);
  CHECK(parse({}, {"model.rope=false"}).model.rope == false);
  CHECK(parse({}, {"model.checkpoint=2024-01-01.h5"}).model.checkpoint == "2024-01-01.h5");
  CHECK_THAT(c.deck_text, Contains("layers = 4") && Contains("# --set model.layers=8") &&
                              Contains("# --set model.layers=6"));
  // The overridden bad value in the file is never read.
  CHECK(parse("[model]\nlayers = \"four\"\n", {"model.layers=3"}).model.layers == 3);
}

TEST_CASE("deck: bad --set values name the override", "[deck]") {
  CHECK(error_of({}, {"parallel.tp=0"}) ==
        "parallel.tp = 0 from --set parallel.tp=0: must be between 1 and 1048576");
  CHECK_THAT(error_of({}, {"model.layers=four"}),
             Contains("model.layers = \"four\" from --set model.layers=four") &&
                 Contains("expected an integer"));
  CHECK_THAT(error_of({}, {"model.hiden=64"}),
             Contains("unknown key model.hiden in --set model.hiden=64") &&
                 Contains("did you mean model.hidden?"));
  CHECK_THAT(error_of({}, {"modle.layers=4"}), Contains("did you mean model.layers?"));
  CHECK_THAT(error_of({}, {"model.ffn=sparse"}), Contains("\"dense\" | \"moe\""));
}

TEST_CASE("deck: malformed --set strings are rejected", "[deck]") {
  for (const char* bad : {"model.layers", "layers=4", "=4", "model.=4", ".layers=4",
                          "model.layers.x=4", "model.layers=4\nmodel.hidden=8"}) {
    INFO(bad);
    CHECK_THAT(error_of({}, {bad}), Contains("bad override --set") && Contains("e.g. --set"));
  }
}

TEST_CASE("deck: load_deck reads a file and reports a missing one", "[deck]") {
  const std::string path = "test_deck_load.toml";
  {
    std::ofstream out(path);
    out << "[model]\nlayers = 3\n";
  }
  const RunConfig c = moeproxy::io::load_deck(path, {"model.hidden=32"});
  std::remove(path.c_str());
  CHECK(c.model.layers == 3);
  CHECK(c.model.hidden == 32);
  CHECK(c.deck_path == path);
  CHECK_THAT(c.deck_text, Contains("[model]\nlayers = 3\n") && Contains("--set model.hidden=32"));
  REQUIRE_THROWS_WITH(moeproxy::io::load_deck("no/such/deck.toml", {}),
                      Contains("no/such/deck.toml") && Contains("cannot read"));
}

TEST_CASE("deck: the --help table lists every key with its default", "[deck]") {
  const std::string help = moeproxy::io::deck_keys_help();
  for (const char* key : {"model.layers", "model.renormalize", "model.rope_theta", "model.norm_eps",
                          "workload.routing", "parallel.micro_batches", "output.dump_hidden",
                          "verify.file"}) {
    CHECK_THAT(help, Contains(key));
  }
  CHECK_THAT(help, Contains("\"results/run.h5\"") && Contains("zipf:<exponent>"));
}

TEST_CASE("deck: head_distribution and expert_map read as lists, per layer when nested deeper", "[deck]") {
  RunConfig c = parse("[parallel]\ntp = 3\nhead_distribution = [2, 1, 1]\nexpert_map = [[1, 3], [0, 2]]\n");
  CHECK(c.parallel.head_distribution == std::vector<int>{2, 1, 1});
  REQUIRE(c.parallel.expert_map.size() == 1);
  CHECK_FALSE(c.parallel.expert_map_per_layer);
  CHECK(c.parallel.expert_map[0] == std::vector<std::vector<int>>{{1, 3}, {0, 2}});

  c = parse("[parallel]\nexpert_map = [[[0], [1], []], [[], [], [0, 1]]]\n");
  CHECK(c.parallel.expert_map_per_layer);
  REQUIRE(c.parallel.expert_map.size() == 2);
  CHECK(c.parallel.expert_map[0] == std::vector<std::vector<int>>{{0}, {1}, {}});
  CHECK(c.parallel.expert_map[1] == std::vector<std::vector<int>>{{}, {}, {0, 1}});

  c = parse("", {"parallel.expert_map=[[0,1],[2,3]]", "parallel.head_distribution=[3,1]"});
  CHECK(c.parallel.expert_map[0] == std::vector<std::vector<int>>{{0, 1}, {2, 3}});
  CHECK(c.parallel.head_distribution == std::vector<int>{3, 1});
  CHECK(parse("").parallel.expert_map.empty());
  CHECK_THAT(moeproxy::io::deck_keys_help(), Contains("parallel.head_distribution") && Contains("parallel.expert_map"));
}

TEST_CASE("deck: malformed head_distribution and expert_map name the key and the shape expected", "[deck]") {
  CHECK_THAT(error_of("[parallel]\nhead_distribution = 3\n"),
             Contains("parallel.head_distribution = 3 at decks/x.toml:2:1") && Contains("an array of head counts"));
  CHECK_THAT(error_of("[parallel]\nhead_distribution = [2, 0]\n"), Contains("between 1 and"));
  CHECK_THAT(error_of("[parallel]\nhead_distribution = [2, \"a\"]\n"), Contains("found a string"));
  CHECK_THAT(error_of("[parallel]\nexpert_map = [0, 1]\n"),
             Contains("parallel.expert_map") && Contains("one array of expert ids per rank"));
  CHECK_THAT(error_of("[parallel]\nexpert_map = [[0, -1]]\n"), Contains("parallel.expert_map") && Contains("between 0"));
  CHECK_THAT(error_of("[parallel]\nexpert_map = [[[0]], [1]]\n"), Contains("found an integer"));
}
