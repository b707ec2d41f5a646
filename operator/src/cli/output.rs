//! `-o table|wide|name|json|yaml|jsonpath=TEMPLATE`, as kubectl spells them.

use anyhow::{Context, Result};
use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;

/// How a command prints what it found.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// `kind/name` of each object, one a line.
    Name,
    /// JSON document.
    Json,
    /// YAML document.
    Yaml,
    /// kubectl-style JSONPath template over the JSON document, e.g. `{.members[*].name}`.
    JsonPath(String),
}

impl std::str::FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" | "table" => Output::Table,
            "wide" => Output::Wide,
            "name" => Output::Name,
            "json" => Output::Json,
            "yaml" => Output::Yaml,
            _ => match s.split_once('=') {
                Some(("jsonpath", t)) if !t.is_empty() => {
                    Template::parse(t)?;
                    Output::JsonPath(t.to_string())
                }
                _ => {
                    return Err(format!(
                        "unknown output format {s:?}: use wide, name, json, yaml or jsonpath=TEMPLATE"
                    ));
                }
            },
        })
    }
}

/// What a command hands to [`emit`]: its JSON document, how to draw it as a table (plain and
/// wide), and the `kind/name` lines for `-o name`.
pub struct View<'a> {
    /// The document (`-o json|yaml|jsonpath`).
    pub doc: &'a Value,
    /// The table; `true` asks for the wide variant.
    pub table: &'a dyn Fn(&Value, bool) -> String,
    /// `kind/name` of each object the document is about.
    pub names: Vec<String>,
}

/// Renders `view` in the requested format.
pub fn emit(output: &Output, view: View<'_>) -> Result<String> {
    Ok(match output {
        Output::Table => (view.table)(view.doc, false),
        Output::Wide => (view.table)(view.doc, true),
        Output::Name => view.names.iter().map(|n| format!("{n}\n")).collect(),
        Output::Json => format!("{}\n", serde_json::to_string_pretty(view.doc)?),
        Output::Yaml => serde_yaml::to_string(view.doc)?,
        Output::JsonPath(t) => Template::parse(t)
            .map_err(anyhow::Error::msg)?
            .render(view.doc)?,
    })
}

/// A parsed kubectl JSONPath template: literal text and `{expression}` parts.
#[derive(Debug)]
struct Template(Vec<Part>);

#[derive(Debug)]
enum Part {
    Text(String),
    Path(JpQuery),
}

impl Template {
    fn parse(t: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(unescape(&rest[..open])));
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("jsonpath template {t:?}: unclosed '{{'"))?;
            let expr = rest[open + 1..close].trim();
            if let Some(lit) = expr.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
                parts.push(Part::Text(unescape(lit)));
            } else {
                if expr.starts_with("range") || expr == "end" {
                    return Err(format!(
                        "jsonpath template {t:?}: range/end is not supported; use [*] (e.g. {{.members[*].name}})"
                    ));
                }
                let path = match expr.strip_prefix('$') {
                    Some(_) => expr.to_string(),
                    None if expr.starts_with('.') || expr.starts_with('[') => format!("${expr}"),
                    None => format!("$.{expr}"),
                };
                let jp = jsonpath_rust::parser::parse_json_path(&path)
                    .map_err(|e| format!("jsonpath template {t:?}: {{{expr}}}: {e}"))?;
                parts.push(Part::Path(jp));
            }
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(unescape(rest)));
        }
        if parts.is_empty() {
            return Err("empty jsonpath template".into());
        }
        Ok(Template(parts))
    }

    /// Values a path selects are joined by a space; strings print bare, others as JSON.
    fn render(&self, doc: &Value) -> Result<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Path(jp) => {
                    let hits: Vec<String> = jsonpath_rust::query::js_path_process(jp, doc)
                        .map_err(|e| anyhow::anyhow!("jsonpath: {e}"))?
                        .into_iter()
                        .map(|r| match r.val {
                            Value::String(s) => Ok(s.clone()),
                            v => serde_json::to_string(v).context("rendering a JSONPath value"),
                        })
                        .collect::<Result<_>>()?;
                    out.push_str(&hits.join(" "));
                }
            }
        }
        Ok(out)
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"members": [{"name": "east", "gpus": 8}, {"name": "west", "gpus": 4}], "kind": "x"})
    }

    fn table(_: &Value, wide: bool) -> String {
        if wide { "WIDE\n" } else { "NARROW\n" }.into()
    }

    fn out(o: &str) -> Result<String> {
        let o: Output = o.parse().map_err(anyhow::Error::msg)?;
        emit(
            &o,
            View {
                doc: &doc(),
                table: &table,
                names: vec!["membercluster/east".into(), "membercluster/west".into()],
            },
        )
    }

    #[test]
    fn formats_are_spelled_as_kubectl_spells_them() {
        assert_eq!(out("table").unwrap(), "NARROW\n");
        assert_eq!(out("wide").unwrap(), "WIDE\n");
        assert_eq!(
            out("name").unwrap(),
            "membercluster/east\nmembercluster/west\n"
        );
        assert!(out("json").unwrap().contains("\"gpus\": 8"));
        assert!(out("yaml").unwrap().contains("  name: east"));
        assert_eq!(out("jsonpath={.members[*].name}").unwrap(), "east west");
        assert_eq!(out("jsonpath={.members[1].gpus}{\"\\n\"}").unwrap(), "4\n");
        assert_eq!(out("jsonpath=kind={.kind}\\n").unwrap(), "kind=x\n");
        assert_eq!(out("jsonpath={.nothing}").unwrap(), "");
    }

    #[test]
    fn bad_formats_say_what_is_accepted() {
        let e = "xml".parse::<Output>().unwrap_err();
        assert!(e.contains("wide, name, json, yaml or jsonpath"), "{e}");
        assert!(
            "jsonpath={.a"
                .parse::<Output>()
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            "jsonpath={range .items[*]}{end}"
                .parse::<Output>()
                .unwrap_err()
                .contains("not supported")
        );
        assert!("jsonpath={.a[}".parse::<Output>().is_err());
    }
}
