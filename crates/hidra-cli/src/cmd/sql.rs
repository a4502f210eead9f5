//! `hidra sql`: one statement in many tenants, rows printed with their tenant.

use anyhow::{Result, bail};
use futures_util::StreamExt;
use hidra::TenantId;
use hidra::fanout::TenantResult;
use hidra::fanout::{Column, Rows};
use serde_json::{Map, Value};

use super::tenant_id;
use crate::config::Settings;
use crate::db::{self, Needs};
use crate::opt::SqlArgs;
use crate::output::{self, Table, note, outln};

/// How the rows are printed.
enum Format {
    /// An aligned table once every tenant has answered.
    Table(Option<Table>),
    /// CSV as the tenants answer; the first tenant's columns are the header.
    Csv(Option<Vec<Column>>),
    /// One JSON object per row as the tenants answer.
    Json,
}

pub(crate) async fn run(settings: &Settings, args: SqlArgs) -> Result<()> {
    let chosen: Vec<TenantId> = args
        .tenant
        .iter()
        .map(|raw| tenant_id(raw))
        .collect::<Result<_>>()?;
    let concurrency = usize::from(args.concurrency);
    let needs = Needs {
        pool_size: u32::from(args.concurrency) + 1,
        ..Needs::default()
    };
    let db = db::connect(settings, needs).await?;
    let mut fan_out = db.hidra.fan_out().concurrency(concurrency);
    if !args.all_tenants {
        fan_out = fan_out.tenants(chosen);
    }
    let mut format = match (args.json, args.csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv(None),
        _ => Format::Table(None),
    };
    let (mut answered, mut failed) = (0usize, 0usize);
    let mut results = fan_out.query(args.sql);
    while let Some(result) = results.next().await {
        let TenantResult { tenant, result, .. } = result?;
        answered += 1;
        let printed = match result {
            Ok(rows) => format.rows(&tenant, &rows),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        if let Err(e) = printed {
            failed += 1;
            if output::is_broken_pipe(&e) {
                return Err(e);
            }
            format.failure(&tenant, &e)?;
        }
    }
    if let Format::Table(Some(table)) = &format {
        table.print()?;
    }
    if answered == 0 {
        note!("no tenant to run it in");
    }
    if failed > 0 {
        bail!(
            "the statement failed in {} of {}",
            failed,
            output::plural(answered, "tenant", "tenants")
        );
    }
    Ok(())
}

impl Format {
    fn rows(&mut self, tenant: &TenantId, rows: &Rows) -> Result<()> {
        match self {
            Format::Table(table) => {
                let table = table.get_or_insert_with(|| {
                    let mut headers = vec!["TENANT".to_owned()];
                    headers.extend(rows.columns.iter().map(|c| c.name.clone()));
                    Table::with_headers(headers)
                });
                for row in &rows.rows {
                    let mut cells = vec![tenant.to_string()];
                    cells.extend(
                        row.iter()
                            .map(|v| v.clone().unwrap_or_else(|| "NULL".into())),
                    );
                    table.row(cells);
                }
                if rows.columns.is_empty() {
                    table.row(vec![
                        tenant.to_string(),
                        format!("{} rows affected", rows.rows_affected),
                    ]);
                }
            }
            Format::Csv(header) => {
                let header = match header {
                    Some(header) => header,
                    None => {
                        let mut line = vec![csv_field("tenant")];
                        line.extend(rows.columns.iter().map(|c| csv_field(&c.name)));
                        outln!("{}", line.join(","))?;
                        header.insert(rows.columns.clone())
                    }
                };
                if *header != rows.columns {
                    bail!(
                        "its columns ({}) differ from the first tenant's ({}); is it at another migration version?",
                        describe(&rows.columns),
                        describe(header)
                    );
                }
                for row in &rows.rows {
                    let mut line = vec![csv_field(tenant.as_str())];
                    line.extend(
                        row.iter()
                            .map(|v| v.as_deref().map(csv_field).unwrap_or_default()),
                    );
                    outln!("{}", line.join(","))?;
                }
            }
            Format::Json => {
                for row in &rows.rows {
                    let fields: Map<String, Value> = rows
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.name.clone(), json_value(c, v.as_deref())))
                        .collect();
                    let line = serde_json::json!({ "tenant": tenant, "row": fields });
                    outln!("{line}")?;
                }
                if rows.columns.is_empty() {
                    let line = serde_json::json!({ "tenant": tenant, "rows_affected": rows.rows_affected });
                    outln!("{line}")?;
                }
            }
        }
        Ok(())
    }

    fn failure(&mut self, tenant: &TenantId, e: &anyhow::Error) -> Result<()> {
        let message = output::one_line(e.as_ref());
        note!("tenant {tenant} failed: {message}");
        if let Format::Json = self {
            outln!(
                "{}",
                serde_json::json!({ "tenant": tenant, "error": message })
            )?;
        }
        Ok(())
    }
}

fn describe(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.type_name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// A value in JSON: numbers, booleans and JSON as themselves, the rest as
/// PostgreSQL's text.
fn json_value(column: &Column, text: Option<&str>) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    let typed = match column.type_name.as_str() {
        "INT2" | "INT4" | "INT8" | "FLOAT4" | "FLOAT8" | "NUMERIC" | "OID" => {
            serde_json::from_str::<serde_json::Number>(text)
                .ok()
                .map(Value::Number)
        }
        "BOOL" => Some(Value::Bool(text == "t")),
        "JSON" | "JSONB" => serde_json::from_str(text).ok(),
        _ => None,
    };
    typed.unwrap_or_else(|| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
