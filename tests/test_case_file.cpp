// The case file's rules (retort/audit/case_file.h): which verdict a set of results gives, the null
// calibration on controls, the Bonferroni factor for picking the strongest test, bad input named, and a
// page that holds what the JSON holds. The results here have the shape `audit radioactivity --out` writes
// (tests/audit/test_radioactivity_cli.py feeds real ones through `audit report` and headless Chromium).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "retort/audit/case_file.h"
#include "retort/util/error.h"

namespace {

using OJson = nlohmann::ordered_json;
using retort::build_case;
using retort::CaseInputs;

// A radioactivity result with one test: `scored` units, green share `rate`, exact log10 p (null = too short).
OJson result(const std::string& model, const std::string& mode, int64_t scored, double rate, OJson log10_p,
             const std::string& commitment = "c0ffee") {
  OJson r;
  r["audit"] = "radioactivity";
  r["mode"] = mode;
  r["suspect"] = {{"model", model}, {"path", "/models/" + model + ".gguf"}};
  r["params"] = {{"scheme", "kgw"}, {"gamma", 0.25}};
  r["key_commitment"] = commitment;
  r["counts"] = {{"positions", scored * 2}, {"scored", scored}};
  r["test"] = {{"tokens_scored", scored}, {"log10_p", log10_p}, {"p_value", log10_p.is_null() ? OJson(nullptr) : OJson(std::pow(10.0, log10_p.get<double>()))}};
  r["score_rate"] = rate;
  r["null_rate"] = 0.25;
  r["enough_evidence"] = !log10_p.is_null();
  r["pairs_needed_for_target"] = log10_p.is_null() ? OJson(4200) : OJson(nullptr);
  r["target_p"] = 1e-5;
  r["verdict"] = "";
  return r;
}

CaseInputs inputs(std::vector<OJson> suspect, std::vector<OJson> controls = {}) {
  CaseInputs in;
  in.suspect.assign(suspect.begin(), suspect.end());
  in.controls.assign(controls.begin(), controls.end());
  in.created = "2026-12-03T00:00:00Z";
  return in;
}

std::string finding(const OJson& c) { return c["verdict"]["finding"].get<std::string>(); }
std::string paragraph(const OJson& c) { return c["verdict"]["paragraph"].get<std::string>(); }

TEST(CaseFile, EvidenceNeedsTheTargetAndCalibratedControls) {
  const auto ctrl = {result("gemma", "open", 5000, 0.251, -0.4), result("student0", "open", 5000, 0.248, -0.05)};
  const OJson c = build_case(inputs({result("suspect", "open", 40000, 0.262, -9.0)}, ctrl));
  EXPECT_EQ(finding(c), "evidence");
  EXPECT_NE(paragraph(c).find("p = 1e-09"), std::string::npos) << paragraph(c);
  EXPECT_NE(paragraph(c).find("26.20% of 40,000 distinct scored units were green"), std::string::npos) << paragraph(c);
  EXPECT_NE(paragraph(c).find("2 control models"), std::string::npos);
  EXPECT_EQ(c["radioactivity"]["calibration"]["controls_below_1e-3"], 0);
  EXPECT_DOUBLE_EQ(c["radioactivity"]["calibration"]["smallest_control_log10_p"].get<double>(), -0.4);
  // Just above the target: no evidence (the rule is p <= target, target from the result).
  EXPECT_EQ(finding(build_case(inputs({result("suspect", "open", 40000, 0.26, -4.99)}, ctrl))), "no_evidence");
}

TEST(CaseFile, AControlBelowTheFloorMakesItInconclusive) {
  const OJson c = build_case(inputs({result("suspect", "open", 40000, 0.262, -9.0)},
                                    {result("gemma", "open", 5000, 0.27, -3.2), result("s0", "open", 5000, 0.25, -0.3)}));
  EXPECT_EQ(finding(c), "inconclusive");
  EXPECT_EQ(c["radioactivity"]["calibration"]["controls_below_1e-3"], 1);
  EXPECT_NE(paragraph(c).find("1 of 2 control models"), std::string::npos) << paragraph(c);
}

TEST(CaseFile, TooLittleTextGivesNoPValueButTheCountNeeded) {
  const OJson c = build_case(inputs({result("suspect", "closed", 40, 0.3, nullptr)}));
  EXPECT_EQ(finding(c), "not_enough_evidence");
  EXPECT_NE(paragraph(c).find("about 4,200 scored units"), std::string::npos) << paragraph(c);
  EXPECT_TRUE(c["verdict"]["strongest_log10_p"].is_null());
  EXPECT_EQ(c["radioactivity"]["suspect"][0]["p"], "no p-value (not enough evidence)");
}

TEST(CaseFile, StrongestOfSeveralTestsIsBonferroniCorrected) {
  // Open and closed on the suspect: the closed one's p 4e-6 becomes 8e-6 (still <= 1e-5) ...
  OJson c = build_case(inputs({result("s", "open", 9000, 0.25, -0.2), result("s", "closed", 9000, 0.27, std::log10(4e-6))}));
  EXPECT_EQ(c["verdict"]["test_families"], 2);
  EXPECT_NEAR(c["verdict"]["strongest_log10_p"].get<double>(), std::log10(8e-6), 1e-12);
  EXPECT_EQ(finding(c), "evidence");
  // ... and 6e-6 becomes 1.2e-5: no longer below the target.
  c = build_case(inputs({result("s", "open", 9000, 0.25, -0.2), result("s", "closed", 9000, 0.27, std::log10(6e-6))}));
  EXPECT_EQ(finding(c), "no_evidence");
}

TEST(CaseFile, AccountKeysAreTestsOfTheirOwn) {
  OJson r = result("api-suspect", "closed", 3000, 0.251, -0.3);
  r["accounts"] = OJson::array();
  for (auto [name, l10] : {std::pair{"alice", 0.0}, {"mallory", -12.0}, {"bob", -0.1}})
    r["accounts"].push_back({{"account", name}, {"tokens_scored", 3000}, {"score", 1000.0}, {"log10_p", l10},
                             {"log10_p_holm", l10 + std::log10(3.0)}, {"key_commitment", std::string("k-") + name}});
  const OJson c = build_case(inputs({r}));
  EXPECT_EQ(finding(c), "evidence");
  EXPECT_NE(paragraph(c).find("served to account \"mallory\""), std::string::npos) << paragraph(c);
  EXPECT_EQ(c["radioactivity"]["suspect"].size(), 4u);  // master key + 3 accounts
  EXPECT_EQ(c["key_commitments"].size(), 4u);
  EXPECT_NEAR(c["verdict"]["strongest_log10_p"].get<double>(), -12.0 + std::log10(3.0) + std::log10(2.0), 1e-9);
}

TEST(CaseFile, ProvenanceOnlyAndNoEvidence) {
  OJson p;
  p["audit"] = "provenance";
  p["suspect"] = {{"kind", "local"}, {"spec", "suspect.gguf"}};
  p["candidates"] = OJson::array({{{"candidate", {{"spec", "teacher"}}}, {"mean_similarity", 0.61}, {"p_value", 1e-9},
                                   {"p_holm", 1e-9}, {"derived", true}, {"decision", "derived from teacher"},
                                   {"controls", OJson::array({{{"spec", "gemma"}, {"mean_similarity", 0.1},
                                                               {"candidate_closer", 30}, {"control_closer", 0},
                                                               {"p_value", 9.3e-10}}})}}});
  CaseInputs in = inputs({});
  in.provenance = {p};
  OJson c = build_case(in);
  EXPECT_EQ(c["suspect"], "suspect.gguf");
  EXPECT_EQ(finding(c), "provenance_only");
  EXPECT_NE(paragraph(c).find("derived from teacher"), std::string::npos);
  const std::string html = retort::case_html(c);
  EXPECT_NE(html.find("<td>teacher</td>"), std::string::npos);
  EXPECT_NE(html.find("vs gemma"), std::string::npos);
  // Not derived, and no watermark trace: no evidence, with the caveat that absence is not shown.
  in = inputs({result("suspect", "open", 20000, 0.251, -0.5)});
  in.provenance = {p};
  in.provenance[0]["candidates"][0]["derived"] = false;
  c = build_case(in);
  EXPECT_EQ(finding(c), "no_evidence");
  EXPECT_NE(c["verdict"]["caveats"].dump().find("not evidence of absence"), std::string::npos);
}

TEST(CaseFile, InputThatIsNotAResultIsNamed) {
  CaseInputs in = inputs({OJson{{"hello", 1}}});
  in.sources = {"suspect: /tmp/x.json"};
  try {
    build_case(in);
    FAIL() << "accepted a non-result";
  } catch (const retort::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/tmp/x.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("audit radioactivity --out"), std::string::npos) << e.what();
  }
  OJson r = result("s", "open", 10, 0.2, -0.1);
  r.erase("counts");
  EXPECT_THROW(build_case(inputs({r})), retort::Error);
  EXPECT_THROW(build_case(inputs({})), retort::Error);  // nothing to report
}

TEST(CaseFile, PageHoldsTheVerdictChartsAndNoKeys) {
  OJson s = result("suspect", "open", 40000, 0.262, -9.0);
  s["samples"] = OJson::array({{{"tokens", OJson::array({{{"text", "The <b>sea"}, {"mark", "green"}, {"predicted", " sea"}},
                                                          {{"text", " is"}, {"mark", "red"}},
                                                          {{"text", " blue"}, {"mark", "not-scored"}}})}}});
  const OJson c = build_case(inputs({s}, {result("gemma", "open", 5000, 0.251, -0.4)}));
  const std::string html = retort::case_html(c);
  EXPECT_NE(html.find("id=\"verdict\""), std::string::npos);
  EXPECT_NE(html.find(paragraph(c).substr(0, 40)), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("The &lt;b&gt;sea"), std::string::npos);  // sample text escaped
  EXPECT_NE(html.find("<span class=\"tg\" title=\"predicted:  sea\">"), std::string::npos);
  EXPECT_NE(html.find("<span class=\"tr\">"), std::string::npos);
  size_t svgs = 0;
  for (size_t at = 0; (at = html.find("<svg", at)) != std::string::npos; ++at) ++svgs;
  EXPECT_EQ(svgs, 2u);  // p-value bars, calibration
  EXPECT_NE(html.find("c0ffee"), std::string::npos);  // the key commitment
}

}  // namespace
