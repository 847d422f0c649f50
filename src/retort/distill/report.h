// retort/distill/report.h — the distill main job's HTML page (the page-building blocks are in
// util/html_report.h).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "retort/util/html_report.h"

namespace retort {

// ---- The main job's page (pipeline.h) ---------------------------------------------------------

// From the main job's summary.json content alone (plus each run's metrics.jsonl, found through
// summary["runs"][loss]["dir"]): the comparison table (model, params, held-out NLL, ppl, top-1
// agreement, KL, task accuracy when there are tasks; best student per column marked), the task
// accuracy per category with the share of the teacher's the student keeps, curves over steps (train
// loss and train agreement; held-out NLL and agreement, from the untrained student at step 0), the
// teacher's and the students' answers to held-out prompts side by side, then the tasks item by item
// and the settings, folded.
std::string distill_report_html(const nlohmann::json& summary);

}  // namespace retort
