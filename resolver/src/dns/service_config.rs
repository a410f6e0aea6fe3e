//! Choosing a service config from a DNS TXT record (`_grpc_config.<host>`).
//!
//! The record's strings are concatenated; the text must start with
//! `grpc_config=` followed by a JSON list of choices
//! `{clientLanguage, percentage, clientHostname, serviceConfig}` (gRFC A2).
//! The first choice that applies to this client wins; none applying means
//! no config. Pure: the percentage draw is passed in.
//!
//! Where gRPC's implementations differ, a record that works for one works
//! here:
//! - the host names are `clientHostname` (gRFC A2, and the only spelling
//!   gRPC C-core accepts) or `clientHostName` (what grpc-go reads, its JSON
//!   matching names case-insensitively); both are read, and a choice naming
//!   both applies to the hosts of either;
//! - a field a choice has beyond those four is ignored, as C-core and
//!   grpc-go do (A2's text calls such a choice invalid, but neither
//!   implementation rejects it, so a record with one works for their
//!   clients and must for ours). A field that is present with the wrong
//!   type is an error for the whole record, as A21 says.

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
        if !choice.is_object() {
            return Err(format!("choice {i} is not a JSON object"));
        }
        // Each choice is read when reached, as gRPC's resolvers read them.
        let choice: Choice = serde_path_to_error::deserialize(choice)
            .map_err(|e| format!("choice {i}: {}: {}", e.path(), e.inner()))?;
        if let Some(languages) = &choice.client_language
            && !languages.is_empty()
            && !languages
                .iter()
                .any(|l| l.eq_ignore_ascii_case(CLIENT_LANGUAGE))
        {
            continue;
        }
        if let Some(p) = choice.percentage {
            if p > 100 {
                return Err(format!(
                    "choice {i}: percentage is not an integer from 0 to 100"
                ));
            }
            if u64::from(chance) > p {
                continue;
            }
        }
        let hosts: Vec<&String> = choice
            .client_hostname
            .iter()
            .chain(&choice.client_host_name)
            .flatten()
            .collect();
        // An empty list, like an absent field, matches every client.
        if !hosts.is_empty() && !client_host_name.is_some_and(|h| hosts.iter().any(|x| *x == h)) {
            continue;
        }
        return match choice.service_config {
            Some(config @ Value::Object(_)) => Ok(Some(config)),
            Some(_) => Err(format!("choice {i}: serviceConfig is not a JSON object")),
            None => Err(format!("choice {i} has no serviceConfig")),
        };
    }
    Ok(None)
}

/// One choice (gRFC A2), as serde reads it: fields beyond these are
/// ignored (see the module docs); a field of the wrong type is an error
/// naming it.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Choice {
    client_language: Option<Vec<String>>,
    percentage: Option<u64>,
    /// gRFC A2's and C-core's spelling.
    client_hostname: Option<Vec<String>>,
    /// grpc-go's spelling.
    #[serde(rename = "clientHostName")]
    client_host_name: Option<Vec<String>>,
    service_config: Option<Value>,
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
            {"clientHostname":["web-1"],"serviceConfig":{"n":"web1"}},
            {"clientHostName":["web-2"],"serviceConfig":{"n":"web2"}},
            {"serviceConfig":{"n":"all"}}
        ]"#;
        assert_eq!(choose(text, None, 10).unwrap(), Some(json!({"n":"half"})));
        assert_eq!(choose(text, None, 50).unwrap(), Some(json!({"n":"half"})));
        assert_eq!(choose(text, None, 51).unwrap(), Some(json!({"n":"all"})));
        assert_eq!(
            choose(text, Some("web-1"), 99).unwrap(),
            Some(json!({"n":"web1"})),
            "gRFC A2's and C-core's spelling"
        );
        assert_eq!(
            choose(text, Some("web-2"), 99).unwrap(),
            Some(json!({"n":"web2"})),
            "grpc-go's spelling"
        );
        assert_eq!(
            choose(text, Some("web-3"), 99).unwrap(),
            Some(json!({"n":"all"}))
        );
        // Empty lists match every client (gRFC A2).
        let empty =
            r#"grpc_config=[{"clientLanguage":[],"clientHostname":[],"serviceConfig":{"n":"e"}}]"#;
        assert_eq!(choose(empty, None, 1).unwrap(), Some(json!({"n":"e"})));
    }

    #[test]
    fn unknown_fields_in_a_choice_are_ignored_as_c_core_and_grpc_go_do() {
        let text = r#"grpc_config=[{"clientHostname":["web-1"],"futureField":{"x":1},"serviceConfig":{"n":"web1"}},{"serviceConfig":{"n":"all"}}]"#;
        assert_eq!(
            choose(text, Some("web-1"), 1).unwrap(),
            Some(json!({"n":"web1"}))
        );
        assert_eq!(
            choose(text, Some("web-2"), 1).unwrap(),
            Some(json!({"n":"all"}))
        );
    }

    #[test]
    fn a_choice_with_both_spellings_matches_the_hosts_of_either() {
        let text = r#"grpc_config=[{"clientHostname":["a"],"clientHostName":["b"],"serviceConfig":{"n":"ab"}}]"#;
        assert_eq!(choose(text, Some("a"), 1).unwrap(), Some(json!({"n":"ab"})));
        assert_eq!(choose(text, Some("b"), 1).unwrap(), Some(json!({"n":"ab"})));
        assert_eq!(choose(text, Some("c"), 1).unwrap(), None);
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
                r#"grpc_config=[{"clientHostname":"web-1","serviceConfig":{}}]"#,
                "clientHostname",
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
