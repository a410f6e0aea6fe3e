//! Choosing a service config from a DNS TXT record (`_grpc_config.<host>`).
//!
//! The record's strings are concatenated; the text must start with
//! `grpc_config=` followed by a JSON list of choices
//! `{clientLanguage, percentage, clientHostName, serviceConfig}`. The first
//! choice that applies to this client wins; none applying means no config.
//! Pure: the percentage draw is passed in.

use serde_json::Value;

/// The language name waypost matches in `clientLanguage`.
pub const CLIENT_LANGUAGE: &str = "rust";

const PREFIX: &str = "grpc_config=";

/// Picks the service config for this client from the TXT `text`.
///
/// `chance` is a draw from 1 to 100; a choice with `percentage: p` applies
/// when `chance <= p`. Returns `Ok(None)` when the text is not a gRPC config
/// or no choice applies.
pub fn choose_service_config(
    text: &str,
    client_host_name: Option<&str>,
    chance: u32,
) -> Result<Option<Value>, String> {
    let Some(json) = text.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let choices: Value = serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Array(choices) = choices else {
        return Err("grpc_config is not a JSON list of choices".into());
    };
    for (i, choice) in choices.into_iter().enumerate() {
        let Value::Object(mut choice) = choice else {
            return Err(format!("choice {i} is not a JSON object"));
        };
        if let Some(unknown) = choice.keys().find(|k| {
            !matches!(
                k.as_str(),
                "clientLanguage" | "percentage" | "clientHostName" | "serviceConfig"
            )
        }) {
            return Err(format!("choice {i} has unknown field {unknown:?}"));
        }
        if let Some(languages) = choice.get("clientLanguage") {
            let languages = string_list(languages).ok_or(format!(
                "choice {i}: clientLanguage is not a list of strings"
            ))?;
            if !languages
                .iter()
                .any(|l| l.eq_ignore_ascii_case(CLIENT_LANGUAGE))
            {
                continue;
            }
        }
        if let Some(percentage) = choice.get("percentage") {
            let p = percentage.as_u64().filter(|p| *p <= 100).ok_or(format!(
                "choice {i}: percentage is not an integer from 0 to 100"
            ))?;
            if u64::from(chance) > p {
                continue;
            }
        }
        if let Some(hosts) = choice.get("clientHostName") {
            let hosts = string_list(hosts).ok_or(format!(
                "choice {i}: clientHostName is not a list of strings"
            ))?;
            if !client_host_name.is_some_and(|h| hosts.contains(&h)) {
                continue;
            }
        }
        return match choice.remove("serviceConfig") {
            Some(config @ Value::Object(_)) => Ok(Some(config)),
            Some(_) => Err(format!("choice {i}: serviceConfig is not a JSON object")),
            None => Err(format!("choice {i} has no serviceConfig")),
        };
    }
    Ok(None)
}

fn string_list(value: &Value) -> Option<Vec<&str>> {
    value.as_array()?.iter().map(Value::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn choose(text: &str, host: Option<&str>, chance: u32) -> Result<Option<Value>, String> {
        choose_service_config(text, host, chance)
    }

    #[test]
    fn the_first_applicable_choice_wins() {
        let text = r#"grpc_config=[
            {"clientLanguage":["go","java"],"serviceConfig":{"n":"go"}},
            {"clientLanguage":["RUST"],"percentage":50,"serviceConfig":{"n":"half"}},
            {"clientHostName":["web-1"],"serviceConfig":{"n":"web1"}},
            {"serviceConfig":{"n":"all"}}
        ]"#;
        assert_eq!(choose(text, None, 10).unwrap(), Some(json!({"n":"half"})));
        assert_eq!(choose(text, None, 50).unwrap(), Some(json!({"n":"half"})));
        assert_eq!(choose(text, None, 51).unwrap(), Some(json!({"n":"all"})));
        assert_eq!(
            choose(text, Some("web-1"), 99).unwrap(),
            Some(json!({"n":"web1"}))
        );
    }

    #[test]
    fn no_applicable_choice_or_no_prefix_means_no_config() {
        assert_eq!(
            choose(
                r#"grpc_config=[{"percentage":0,"serviceConfig":{}}]"#,
                None,
                1
            )
            .unwrap(),
            None
        );
        assert_eq!(choose("v=spf1 -all", None, 1).unwrap(), None);
        assert_eq!(choose("grpc_config=[]", None, 1).unwrap(), None);
    }

    #[test]
    fn malformed_configs_are_errors_naming_the_problem() {
        let cases = [
            ("grpc_config={", "invalid JSON"),
            ("grpc_config={}", "not a JSON list"),
            ("grpc_config=[1]", "choice 0 is not a JSON object"),
            (
                r#"grpc_config=[{"bogus":1,"serviceConfig":{}}]"#,
                "unknown field \"bogus\"",
            ),
            (
                r#"grpc_config=[{"percentage":101,"serviceConfig":{}}]"#,
                "percentage",
            ),
            (
                r#"grpc_config=[{"percentage":"x","serviceConfig":{}}]"#,
                "percentage",
            ),
            (
                r#"grpc_config=[{"clientLanguage":"rust","serviceConfig":{}}]"#,
                "clientLanguage",
            ),
            (
                r#"grpc_config=[{"serviceConfig":"x"}]"#,
                "not a JSON object",
            ),
            (r#"grpc_config=[{}]"#, "no serviceConfig"),
        ];
        for (text, needle) in cases {
            let err = choose(text, None, 1).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
