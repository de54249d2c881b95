#pragma once
// The input deck: TOML text plus "--set section.key=value" overrides -> RunConfig.
// Every key is optional (defaults from config.hpp). Anything wrong throws moeproxy::InputError
// with one message naming the key, its value, where it came from and what would be valid.
// Layouts are not checked against the number of ranks here (parallel/ does that).

#include <string>
#include <vector>

#include "moeproxy/core/config.hpp"

namespace moeproxy::io {

// source_name only labels locations in messages ("decks/x.toml:12:1") and becomes
// RunConfig::deck_path. overrides are applied after the text, in order; the last one wins.
RunConfig parse_deck(const std::string& text, const std::string& source_name,
                     const std::vector<std::string>& overrides);

// Reads the file at path, then as parse_deck. A missing or unreadable file is an InputError.
RunConfig load_deck(const std::string& path, const std::vector<std::string>& overrides);

// A text table of every deck key: type, default and valid values (for --help).
std::string deck_keys_help();

}  // namespace moeproxy::io
