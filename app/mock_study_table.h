// The tables of `dslens mock-study` (docs/mock_study.md): a lens's record from its fit folder,
// a level's aggregates (errors, coverage, R-hat, divergences, time), the targets of issue 5, the
// markdown, and the joining of a study's parts (--combine).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "dslens/core/config.h"

namespace dslens::app::mock_study {

std::string fixed(double v, int decimals);
std::string percent(double v, int decimals = 2);
double median(std::vector<double> v);  // of the finite values; NaN if none
double number_or_nan(const json& j, const std::string& key);
std::string utc_date();  // "2026-12-03 13:45 UTC"

// One lens's record: its rows (theta_E, gamma, q, gamma_ext, ...), divergences, times and the log
// posteriors of its MAP and of the truth, from its `dslens fit` folder and its mock's folder.
json read_lens(const std::filesystem::path& lens_dir, const std::filesystem::path& sim_dir);

// Per-parameter aggregates of a level's lens records.
json aggregate(const json& lenses);

// A level's entry of mock_study.json from its lenses' records (read_lens, with the noise).
json level_entry(double snr, const std::string& folder, const json& lenses, double fit_wall);

// The level's line naming the mocks whose MAP search ran more than one round (map.json's
// search_rounds): the lenses a change to the later rounds refits (`mock-study --only`). Empty when
// no record has the count (fits before it was kept).
std::string searched_again_line(const json& lenses);

// The targets of issue 5 checked on a study's levels.
json check_targets(const json& levels);

// A level's section of mock_study.md: its heading, mocks and table (a row over fewer fits than the
// level's labelled "(N of M fits)", one no fit has left out), and its paragraphs.
std::string level_section(const json& level);

std::string render_markdown(const json& study);

// Adds the targets to `study` and writes out/mock_study.json and out/mock_study.md atomically.
void write_study(const std::filesystem::path& out, json study);

// --combine: one study from the mock_study.json of several parts of one study (--first, or
// --partial tables of unfinished runs), e.g. run on different machines. The parts must share every
// setting but the mocks' range and the SNR levels, and the VAE's weights; a mock may appear at a
// level in one part only, unless `replace`: then the last part that holds it gives its record and
// the earlier parts' entries in "combined_from" list what was replaced. Aggregates and targets are
// recomputed from the lenses' records. Throws InputError naming the part otherwise; `out` must not
// exist.
void combine_studies(const std::vector<std::string>& inputs, const std::filesystem::path& out,
                     const std::string& command, bool replace = false);

}  // namespace dslens::app::mock_study
