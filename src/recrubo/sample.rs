//! A stand-in for Recrubo's vacancy analysis, deterministic so tests can expect its output. The
//! simulator answers `POST /vacancy-analyses` with it, and dry runs (`flowd test`, `flowd
//! simulate`) use it as the analysis a step would get; it lives here, with the API's types,
//! so that neither the engine nor the simulator imports the other.

use serde_json::Value;

/// Derives an `analyzeResult` from a vacancy text: one hard skill per line that reads like a
/// requirement ("experience", "knowledge of", "years"), soft skills by keywords, certifications
/// by "certificate"/"diploma"/"license". Deterministic, so tests can expect its output.
pub fn analyze(text: &str) -> Value {
    let mut hard = Vec::new();
    let mut soft = Vec::new();
    let mut certifications = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let lower = line.to_lowercase();
        let clean = line
            .trim_start_matches(['-', '*', '•', ' '])
            .trim_end_matches('.');
        if [
            "certificate",
            "certification",
            "diploma",
            "license",
            "licence",
        ]
        .iter()
        .any(|k| lower.contains(k))
        {
            certifications.push(serde_json::json!({
                "certification": clean,
                "required": lower.contains("must") || lower.contains("required"),
                "reasoning": "the text names it as a certification",
                "writtenAsRequirement": format!("Has {}", lower_first(clean)),
            }));
        } else if ["team", "communicat", "friendly", "independent", "flexible"]
            .iter()
            .any(|k| lower.contains(k))
        {
            soft.push(serde_json::json!({
                "skill": clean,
                "rating": 3,
                "reasoning": "the text asks for it as a trait",
                "writtenAsRequirement": format!("Is {}", lower_first(clean)),
            }));
        } else if [
            "experience",
            "knowledge",
            "years",
            "skill",
            "fluent",
            "speaks",
        ]
        .iter()
        .any(|k| lower.contains(k))
        {
            let rating = if lower.contains("must")
                || lower.contains("required")
                || lower.contains("years")
            {
                5
            } else {
                3
            };
            hard.push(serde_json::json!({
                "skill": clean,
                "rating": rating,
                "reasoning": "the text states it as a requirement",
                "writtenAsRequirement": format!("{}.", clean),
            }));
        }
    }
    serde_json::json!({ "hardSkills": hard, "softSkills": soft, "certifications": certifications })
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
