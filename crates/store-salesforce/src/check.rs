//! The start-up mapping check: the org must have every field the configuration names, on the right
//! object, and every configured status must exist and mean what we take it to mean (a converted status
//! that converts, a won stage that is closed and won, an open stage that is not closed). One line names the
//! first mismatch and the setting to fix. These calls are not part of any operation's budget.

use reqwest::Method;
use serde_json::Value;

use crate::client::{Body, Client, Label, Repeat};
use crate::config::SalesforceConfig;
use crate::OpenError;

const LABEL: Label = Label { operation: "check", step: "describe" };

async fn get(client: &Client, path: &str) -> Result<Value, OpenError> {
    client.call(LABEL, Method::GET, &client.data_path(path), Body::None, Repeat::Safe).await.map_err(OpenError::Connect)
}

async fn query(client: &Client, soql: &str) -> Result<Vec<Value>, OpenError> {
    let answer = get(client, &format!("/query?q={}", crate::soql::encode_query(soql))).await?;
    Ok(answer.get("records").and_then(Value::as_array).cloned().unwrap_or_default())
}

/// The fields of a describe, by name (case-insensitive, as Salesforce treats API names).
fn field<'a>(describe: &'a Value, name: &str) -> Option<&'a Value> {
    describe
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(name)))
}

fn picklist_has(field: &Value, value: &str) -> bool {
    field.get("picklistValues").and_then(Value::as_array).is_some_and(|values| {
        values.iter().any(|v| {
            v.get("value").and_then(Value::as_str) == Some(value)
                && v.get("active").and_then(Value::as_bool) != Some(false)
        })
    })
}

fn mismatch(message: String) -> OpenError {
    OpenError::Mapping(message)
}

pub(crate) async fn run(client: &Client, config: &SalesforceConfig) -> Result<(), OpenError> {
    let f = &config.fields;
    let custom = [
        ("fields.id_number", &f.id_number),
        ("fields.cif", &f.cif),
        ("fields.product", &f.product),
        ("fields.customer_type", &f.customer_type),
        ("fields.channel", &f.channel),
        ("fields.journey_id", &f.journey_id),
    ];
    for object in ["Lead", "Opportunity"] {
        let describe = get(client, &format!("/sobjects/{object}/describe")).await?;
        for (key, name) in custom {
            if field(&describe, name).is_none() {
                return Err(mismatch(format!("{object} has no field {name} (salesforce.{key})")));
            }
        }
        let (status_field, values): (&str, [(&str, &String); 3]) = if object == "Lead" {
            let s = &config.statuses;
            (
                "Status",
                [
                    ("lead_status.open", &s.lead_open),
                    ("lead_status.lost", &s.lead_lost),
                    ("lead_status.converted", &s.lead_converted),
                ],
            )
        } else {
            let s = &config.statuses;
            (
                "StageName",
                [
                    ("opportunity_stage.open", &s.stage_open),
                    ("opportunity_stage.won", &s.stage_won),
                    ("opportunity_stage.lost", &s.stage_lost),
                ],
            )
        };
        let Some(status) = field(&describe, status_field) else {
            return Err(mismatch(format!(
                "{object} has no field {status_field}; is the integration user allowed to read it?"
            )));
        };
        for (key, value) in values {
            if !picklist_has(status, value) {
                return Err(mismatch(format!(
                    "{object}.{status_field} has no active value {value:?} (salesforce.{key})"
                )));
            }
        }
    }
    let user = get(client, "/sobjects/User/describe").await?;
    if field(&user, &config.owner_user_field).is_none() {
        return Err(mismatch(format!("User has no field {} (salesforce.owner_user_field)", config.owner_user_field)));
    }
    let s = &config.statuses;
    let statuses = query(client, "SELECT MasterLabel, ApiName, IsConverted FROM LeadStatus").await?;
    let converts = |value: &str| {
        statuses
            .iter()
            .find(|r| {
                r.get("ApiName").and_then(Value::as_str) == Some(value)
                    || r.get("MasterLabel").and_then(Value::as_str) == Some(value)
            })
            .and_then(|r| r.get("IsConverted").and_then(Value::as_bool))
    };
    if converts(&s.lead_converted) != Some(true) {
        return Err(mismatch(format!(
            "the lead status {:?} is not a converted status (salesforce.lead_status.converted)",
            s.lead_converted
        )));
    }
    for (key, value) in [("lead_status.open", &s.lead_open), ("lead_status.lost", &s.lead_lost)] {
        if converts(value) != Some(false) {
            return Err(mismatch(format!(
                "the lead status {value:?} must exist and not be a converted status (salesforce.{key})"
            )));
        }
    }
    let stages = query(client, "SELECT MasterLabel, ApiName, IsClosed, IsWon FROM OpportunityStage").await?;
    let stage = |value: &str| {
        stages
            .iter()
            .find(|r| {
                r.get("ApiName").and_then(Value::as_str) == Some(value)
                    || r.get("MasterLabel").and_then(Value::as_str) == Some(value)
            })
            .map(|r| {
                (
                    r.get("IsClosed").and_then(Value::as_bool).unwrap_or(false),
                    r.get("IsWon").and_then(Value::as_bool).unwrap_or(false),
                )
            })
    };
    for (key, value, want, meaning) in [
        ("opportunity_stage.open", &s.stage_open, (false, false), "open (not closed)"),
        ("opportunity_stage.won", &s.stage_won, (true, true), "closed and won"),
        ("opportunity_stage.lost", &s.stage_lost, (true, false), "closed and not won"),
    ] {
        if stage(value) != Some(want) {
            return Err(mismatch(format!("the opportunity stage {value:?} must be {meaning} (salesforce.{key})")));
        }
    }
    Ok(())
}
