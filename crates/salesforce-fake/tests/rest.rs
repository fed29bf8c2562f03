//! sObject writes, reads, describe and SOQL queries.
mod support;

use salesforce_fake::{OrgConfig, Schema};
use serde_json::json;
use support::*;

#[tokio::test]
async fn create_lead_fills_defaults_and_counts_api_usage() {
    let c = start().await;
    let rm = c.org.add_user("RM001", true);
    let a = c.create("Lead", lead(&rm, "K1")).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.json()["id"].as_str().unwrap().to_string();
    assert_eq!(a.json()["success"], true);
    assert_eq!(a.json()["errors"], json!([]));
    assert!(id.starts_with("00Q") && id.len() == 18);
    assert_eq!(a.headers["sforce-limit-info"], "api-usage=1/100000");
    let r = c.org.record("Lead", &id).unwrap();
    assert_eq!(r["Status"], "Open - Not Contacted");
    assert_eq!(r["IsConverted"], false);
    assert_eq!(r["OwnerId"], rm.as_str());
    let created = r["CreatedDate"].as_str().unwrap();
    assert_eq!(created.len(), "2026-11-27T10:00:00.000+0000".len());
    assert!(created.ends_with("+0000"));
    let g = c.get(&format!("{V}/sobjects/Lead/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["attributes"]["type"], "Lead");
    assert_eq!(g.json()["OpenKey__c"], "K1");
    let calls = c.org.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].kind, salesforce_fake::CallKind::SObject);
    assert_eq!(calls[0].body.as_ref().unwrap()["OpenKey__c"], "K1");
}

#[tokio::test]
async fn owner_defaults_to_integration_user_and_inactive_or_unknown_owner_fails() {
    let c = start().await;
    let a = c.create("Lead", json!({"LastName": "X", "Company": "X"})).await;
    assert_eq!(a.status, 201);
    let id = a.json()["id"].as_str().unwrap().to_string();
    assert_eq!(c.org.record("Lead", &id).unwrap()["OwnerId"], c.org.integration_user_id().as_str());
    let inactive = c.org.add_user("RM009", false);
    let a = c.create("Lead", json!({"LastName": "X", "Company": "X", "OwnerId": inactive})).await;
    assert_eq!((a.status, a.error_code().as_str()), (400, "INACTIVE_OWNER_OR_USER"));
    let a = c.create("Lead", json!({"LastName": "X", "Company": "X", "OwnerId": "005Wt0000000zzzAAA"})).await;
    assert_eq!(a.status, 400);
    assert!(matches!(a.error_code().as_str(), "INVALID_CROSS_REFERENCE_KEY" | "MALFORMED_ID"), "{}", a.text);
}

#[tokio::test]
async fn write_checks_use_salesforce_error_codes() {
    let c = start().await;
    let rm = c.org.add_user("RM001", true);
    let cases = [
        (json!({"Company": "X", "OwnerId": rm}), "REQUIRED_FIELD_MISSING"),
        (json!({"LastName": "X", "Company": "X", "Status": "Close Won"}), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        (json!({"LastName": "X".repeat(81), "Company": "X"}), "STRING_TOO_LONG"),
        (json!({"LastName": "X", "Company": "X", "Nope__c": "1"}), "INVALID_FIELD"),
        (json!({"LastName": "X", "Company": "X", "IsConverted": true}), "INVALID_FIELD_FOR_INSERT_UPDATE"),
        (json!({"LastName": "X", "Company": "X", "Email": "not-an-email"}), "INVALID_EMAIL_ADDRESS"),
        (json!({"LastName": "X", "Company": "X", "OwnerId": "xyz"}), "MALFORMED_ID"),
    ];
    for (body, code) in cases {
        let a = c.create("Lead", body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert_eq!(a.error_code(), code, "{body}: {}", a.text);
        assert!(a.json()[0]["message"].is_string());
    }
    let a = c.create("Lead", json!({"Company": "X"})).await;
    assert_eq!(a.json()[0]["fields"], json!(["LastName"]));
    let a = c.create("Lead", json!({"LastName": "X", "Company": "X", "Status": "Bad"})).await;
    assert_eq!(a.json()[0]["fields"], json!(["Status"]));
    let a = c.create("Opportunity", json!({"Name": "O", "StageName": "Prospecting"})).await;
    assert_eq!(a.error_code(), "REQUIRED_FIELD_MISSING");
    assert_eq!(a.json()[0]["fields"], json!(["CloseDate"]));
    assert!(c.org.records("Lead").is_empty(), "no failed write left a record");
}

#[tokio::test]
async fn open_key_is_a_unique_external_id() {
    let c = start().await;
    let rm = c.org.add_user("RM001", true);
    let first = c.create("Lead", lead(&rm, "KEY-1")).await.json()["id"].as_str().unwrap().to_string();
    let a = c.create("Lead", lead(&rm, "KEY-1")).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.error_code(), "DUPLICATE_VALUE");
    assert_eq!(
        a.json()[0]["message"],
        format!("duplicate value found: OpenKey__c duplicates value on record with id: {first}")
    );
    // null is not a duplicate; clearing the key frees it
    assert_eq!(c.create("Lead", lead(&rm, "")).await.status, 201);
    assert_eq!(c.create("Lead", lead(&rm, "")).await.status, 201);
    assert_eq!(c.update("Lead", &first, json!({"OpenKey__c": null})).await.status, 204);
    assert_eq!(c.create("Lead", lead(&rm, "KEY-1")).await.status, 201);
}

#[tokio::test]
async fn validation_and_duplicate_rules() {
    let c = start().await;
    let rm = c.org.add_user("RM001", true);
    c.org.validation_rule("Lead", "Channel__c", "BLOCKED", "Channel is blocked");
    let mut body = lead(&rm, "K1");
    body["Channel__c"] = json!("BLOCKED");
    let a = c.create("Lead", body).await;
    assert_eq!((a.status, a.error_code().as_str()), (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION"));
    assert_eq!(a.json()[0]["message"], "Channel is blocked");

    c.org.duplicate_rule("Lead", "IdNumber__c");
    let existing = c.org.insert("Lead", json!({"LastName": "Y", "Company": "Y", "IdNumber__c": "079123456789"}));
    let a = c.create("Lead", lead(&rm, "K2")).await;
    assert_eq!((a.status, a.error_code().as_str()), (400, "DUPLICATES_DETECTED"));
    let matched = &a.json()[0]["duplicateResult"]["matchResults"][0]["matchRecords"][0]["record"]["Id"];
    assert_eq!(matched, &json!(existing));
}

#[tokio::test]
async fn converted_lead_refuses_updates_and_bad_ids_are_told_apart() {
    let c = start().await;
    let id = c.org.insert("Lead", json!({"LastName": "Y", "Company": "Y"}));
    assert_eq!(c.update("Lead", &id, json!({"Status": "Working - Contacted"})).await.status, 204);
    assert_eq!(c.org.record("Lead", &id).unwrap()["Status"], "Working - Contacted");
    let a = c.update("Lead", &id, json!({"Status": "Nope"})).await;
    assert_eq!(a.error_code(), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    let a = c.update("Lead", &id, json!({"LastName": null})).await;
    assert_eq!(a.error_code(), "REQUIRED_FIELD_MISSING");
    let converted = c
        .org
        .insert("Lead", json!({"LastName": "Z", "Company": "Z", "IsConverted": true, "Status": "Closed - Converted"}));
    let a = c.update("Lead", &converted, json!({"Status": "Closed - Not Converted"})).await;
    assert_eq!((a.status, a.error_code().as_str()), (400, "CANNOT_UPDATE_CONVERTED_LEAD"));
    let a = c.update("Lead", "garbage", json!({"LastName": "A"})).await;
    assert_eq!((a.status, a.error_code().as_str()), (400, "MALFORMED_ID"));
    let a = c.update("Lead", "00QWt0000000zzz", json!({"LastName": "A"})).await;
    assert_eq!((a.status, a.error_code().as_str()), (404, "NOT_FOUND"));
    let a = c.send("PATCH", &format!("{V}/sobjects/Lead/{id}"), None).await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn opportunity_stage_drives_is_closed_and_is_won() {
    let c = start().await;
    let a = c.create("Opportunity", json!({"Name": "O", "StageName": "Prospecting", "CloseDate": "2026-12-31"})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.json()["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("006"));
    assert_eq!(c.org.record("Opportunity", &id).unwrap()["IsClosed"], false);
    assert_eq!(c.update("Opportunity", &id, json!({"StageName": "Closed Won"})).await.status, 204);
    let r = c.org.record("Opportunity", &id).unwrap();
    assert_eq!((r["IsClosed"].clone(), r["IsWon"].clone()), (json!(true), json!(true)));
    let a = c.create("Opportunity", json!({"Name": "O", "StageName": "Prospecting", "CloseDate": "31/12/2026"})).await;
    assert_eq!(a.error_code(), "JSON_PARSER_ERROR");
}

#[tokio::test]
async fn describe_follows_the_schema() {
    let mut schema = Schema::standard();
    assert!(schema.remove_field("Lead", "JourneyId__c"));
    assert!(schema.remove_picklist_value("Lead", "Status", "Working - Contacted"));
    let c = start_with(OrgConfig { schema, ..config() }).await;
    let a = c.get(&format!("{V}/sobjects/Lead/describe")).await;
    assert_eq!(a.status, 200);
    let d = a.json();
    assert_eq!(d["name"], "Lead");
    let fields = d["fields"].as_array().unwrap();
    assert!(fields.iter().all(|f| f["name"] != "JourneyId__c"));
    let status = fields.iter().find(|f| f["name"] == "Status").unwrap();
    assert_eq!(status["type"], "picklist");
    assert_eq!(status["restrictedPicklist"], true);
    let values: Vec<&str> =
        status["picklistValues"].as_array().unwrap().iter().map(|v| v["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["Open - Not Contacted", "Closed - Converted", "Closed - Not Converted"]);
    let key = fields.iter().find(|f| f["name"] == "OpenKey__c").unwrap();
    assert_eq!(
        (key["unique"].clone(), key["externalId"].clone(), key["length"].clone()),
        (json!(true), json!(true), json!(255))
    );
    let a = c.create("Lead", json!({"LastName": "X", "Company": "X", "JourneyId__c": "J"})).await;
    assert_eq!(a.error_code(), "INVALID_FIELD");
    let a = c.create("Lead", json!({"LastName": "X", "Company": "X", "Status": "Working - Contacted"})).await;
    assert_eq!(a.error_code(), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert_eq!(c.get(&format!("{V}/sobjects/Nope/describe")).await.status, 404);
    assert_eq!(c.org.calls().last().unwrap().kind, salesforce_fake::CallKind::Describe);
}

#[tokio::test]
async fn soql_filters_orders_and_escapes() {
    let c = start().await;
    let rm1 = c.org.add_user("RM001", true);
    let rm2 = c.org.add_user("RM002", true);
    let a = c.org.insert(
        "Lead",
        json!({"LastName": "O'Brien", "Company": "A", "OwnerId": rm1, "IdNumber__c": "1", "Product__c": "CARD"}),
    );
    let b = c.org.insert(
        "Lead",
        json!({"LastName": "B\\C", "Company": "B", "OwnerId": rm2, "IdNumber__c": "1", "Product__c": "LOAN"}),
    );
    let d = c.org.insert("Lead", json!({"LastName": "D", "Company": "D", "OwnerId": rm1, "IdNumber__c": "2", "Status": "Closed - Not Converted"}));

    let q = c.query("SELECT Id, LastName FROM Lead WHERE LastName = 'O\\'Brien'").await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.json()["totalSize"], 1);
    assert_eq!(q.json()["done"], true);
    assert_eq!(q.json()["records"][0]["Id"], a.as_str());
    assert_eq!(q.json()["records"][0]["attributes"], json!({"type": "Lead", "url": format!("{V}/sobjects/Lead/{a}")}));
    let q = c.query("select id from lead where lastname = 'b\\\\c'").await;
    assert_eq!(q.json()["records"][0]["Id"], b.as_str(), "{}", q.text);

    let q = c.query("SELECT Id FROM Lead WHERE IdNumber__c = '1' AND (Product__c IN ('CARD', 'X') OR OwnerId = null) ORDER BY CreatedDate DESC, Id DESC").await;
    let ids: Vec<String> =
        q.json()["records"].as_array().unwrap().iter().map(|r| r["Id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec![a.to_string()]);
    let q = c.query("SELECT Id FROM Lead WHERE Status NOT IN ('Closed - Converted', 'Closed - Not Converted') ORDER BY CreatedDate DESC, Id DESC LIMIT 5").await;
    let got: Vec<String> =
        q.json()["records"].as_array().unwrap().iter().map(|r| r["Id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, [b.clone(), a.clone()]);
    let q = c.query(&format!("SELECT Id, Owner.FederationIdentifier FROM Lead WHERE Id = '{}'", &d[..15])).await;
    assert_eq!(q.json()["records"][0]["Owner"]["FederationIdentifier"], "RM001", "{}", q.text);
    let q = c.query("SELECT Id FROM User WHERE FederationIdentifier = 'RM002' AND IsActive = true").await;
    assert_eq!(q.json()["records"][0]["Id"], rm2.as_str());
    let q = c.query("SELECT COUNT() FROM Lead WHERE IdNumber__c != '1'").await;
    assert_eq!(q.json()["totalSize"], 1);
    let q = c.query("SELECT Id, IsConverted, ApiName FROM LeadStatus WHERE IsConverted = true").await;
    assert_eq!(q.json()["records"][0]["ApiName"], "Closed - Converted");
    let q = c.query("SELECT ApiName, IsClosed, IsWon FROM OpportunityStage ORDER BY ApiName").await;
    assert_eq!(q.json()["totalSize"], 4);
}

#[tokio::test]
async fn bad_soql_answers_malformed_query_or_invalid_field() {
    let c = start().await;
    for (soql, code) in [
        ("SELECT Nope__c FROM Lead", "INVALID_FIELD"),
        ("SELECT Id FROM Lead WHERE Nope = 'x'", "INVALID_FIELD"),
        ("SELECT Id FROM Nope", "INVALID_TYPE"),
        ("SELECT Id Lead", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE LastName = 'unterminated", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE LastName = 'bad \\q escape'", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE (LastName = 'x'", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead LIMIT x", "MALFORMED_QUERY"),
        ("", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE Id = 'nope'", "INVALID_QUERY_FILTER_OPERATOR"),
    ] {
        let q = c.query(soql).await;
        assert_eq!(q.status, 400, "{soql}: {}", q.text);
        assert_eq!(q.error_code(), code, "{soql}: {}", q.text);
    }
    let q = c.query("SELECT Nope__c FROM Lead").await;
    assert!(q.json()[0]["message"].as_str().unwrap().contains("ERROR at Row:1:Column:8"), "{}", q.text);
    assert_eq!(c.get(&format!("{V}/query")).await.error_code(), "MALFORMED_QUERY");
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let c = start().await;
    assert_eq!(c.get(&format!("{V}/nothing/here")).await.error_code(), "NOT_FOUND");
    assert_eq!(c.get(&format!("{V}/sobjects/Nope/00QWt0000000001")).await.status, 404);
    assert_eq!(c.send("PUT", &format!("{V}/sobjects/Lead"), Some(json!({}))).await.error_code(), "METHOD_NOT_ALLOWED");
    let a = c.send("POST", &format!("{V}/sobjects/Lead"), None).await;
    assert_eq!(a.status, 400);
    let raw = c
        .http
        .post(format!("{}{V}/sobjects/Lead", c.org.url()))
        .bearer_auth(&c.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let v: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(v[0]["errorCode"], "JSON_PARSER_ERROR");
    assert_eq!(c.send("POST", &format!("{V}/sobjects/User"), Some(json!({"Username": "x"}))).await.status, 400);
}
