//! `hidra view create|refresh|drop`

use anyhow::Result;
use hidra::UnionView;
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, Needs};
use crate::opt::ViewCommand;
use crate::output::{self, note, outln};

#[derive(Debug, Serialize)]
struct ViewJson {
    view: String,
    table: String,
    columns: Vec<String>,
    tenants: usize,
    left_out_columns: Vec<String>,
    left_out_tenants: Vec<(String, String)>,
}

impl From<&UnionView> for ViewJson {
    fn from(v: &UnionView) -> Self {
        ViewJson {
            view: format!("{}.{}", v.schema, v.name),
            table: v.table.clone(),
            columns: v.columns.clone(),
            tenants: v.tenants,
            left_out_columns: v.left_out_columns.clone(),
            left_out_tenants: v
                .left_out_tenants
                .iter()
                .map(|(id, why)| (id.to_string(), why.clone()))
                .collect(),
        }
    }
}

pub(crate) async fn run(settings: &Settings, command: ViewCommand) -> Result<()> {
    let db = db::connect(settings, Needs::default()).await?;
    match command {
        ViewCommand::Create { table, json } => {
            let view = db.hidra.create_union_view(&table).await?;
            if json {
                return output::json(&ViewJson::from(&view));
            }
            describe(&view)
        }
        ViewCommand::Refresh { json } => {
            let views = db.hidra.refresh_union_views().await?;
            if json {
                return output::json(&views.iter().map(ViewJson::from).collect::<Vec<_>>());
            }
            if views.is_empty() {
                note!("no union views to refresh (create one with `hidra view create TABLE`)");
            }
            views.iter().try_for_each(describe)
        }
        ViewCommand::Drop { table } => {
            if db.hidra.drop_union_view(&table).await? {
                outln!("dropped the view over `{table}`")
            } else {
                outln!("no view over `{table}` was maintained")
            }
        }
    }
}

fn describe(view: &UnionView) -> Result<()> {
    outln!(
        "{}.{}: `{}` of {} tenant(s), columns tenant_id, {}",
        view.schema,
        view.name,
        view.table,
        view.tenants,
        view.columns.join(", ")
    )?;
    if !view.left_out_columns.is_empty() {
        note!(
            "columns not every tenant has (left out): {}",
            view.left_out_columns.join(", ")
        );
    }
    for (id, why) in &view.left_out_tenants {
        note!("tenant `{id}` left out: {why}");
    }
    Ok(())
}
