// commands.h: the dsmoe subcommands; each registers its flags on the CLI11 app and returns the
// function that runs it.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace dsmoe::cli {

using Command = std::function<int()>;

Command add_forward(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_chat(CLI::App& app);
Command add_init(CLI::App& app);
Command add_train(CLI::App& app);
Command add_report(CLI::App& app);
Command add_corpus(CLI::App& app);
Command add_bench(CLI::App& app);
Command add_serve(CLI::App& app);  // apps/server/cmd_serve.cpp
Command add_tokenize(CLI::App& app);
Command add_export(CLI::App& app);

}  // namespace dsmoe::cli
