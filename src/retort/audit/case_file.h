// retort/audit/case_file.h — the case file: what an investigator hands to people who must judge it.
//
// Built only from the JSON results the audit commands write (`audit radioactivity --out`, `audit
// provenance --out`), so every number on the page can be traced to a run that can be repeated:
//   - the tests run on the suspect (radioactivity, open and/or closed), with counts and exact p-values;
//   - the same tests run on control models that never saw our watermark: the null calibration (their
//     p-values should look uniform; one below 1e-3 means the test is not to be trusted here);
//   - the provenance table (suspect vs candidate parents vs controls), when given;
//   - samples of scored text with each token's fate highlighted;
//   - what was tested and how: key commitments (never keys), models with their paths/URLs and hashes,
//     settings; and a verdict in plain words with its caveats.
// The page is self-contained HTML (inline SVG, no scripts or fetched assets); the JSON holds the same content.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace retort {

struct CaseInputs {
  std::string title;                           // "" = "Case file: <suspect>"
  std::string suspect_name;                    // "" = from the first suspect result
  std::vector<nlohmann::ordered_json> suspect; // radioactivity results on the suspect
  std::vector<nlohmann::ordered_json> controls;// radioactivity results on control models
  std::vector<nlohmann::ordered_json> provenance;  // provenance results (any number)
  std::vector<std::string> sources;            // the files read, in the order above (for the record)
  std::string created;                         // ISO time, set by the caller
};

// The case as JSON: {title, created, suspect, verdict: {finding, paragraph, caveats}, radioactivity:
// {suspect: [...], controls: [...], calibration: {...}}, provenance: [...], key_commitments, sources}.
// Throws retort::Error when an input is not an audit result (names which one and what is missing).
nlohmann::ordered_json build_case(const CaseInputs& in);

// The page for a case built by build_case.
std::string case_html(const nlohmann::ordered_json& c);

}  // namespace retort
