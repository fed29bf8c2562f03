//! SPEC §3 through HTTP.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn a_record_has_every_field_and_its_history(app: TestApp) {
        let r = app
            .client
            .post(format!("{}{CREATE}", app.base))
            .header("x-request-id", "req-create-1")
            .json(&ntb("R1", "CARD", "RM001"))
            .send()
            .await
            .unwrap();
        let created: Value = r.json().await.unwrap();
        let id = created["id"].as_str().unwrap();
        let lead = app.record("leads", id).await;
        for (field, value) in [
            ("id", json!(id)),
            ("recordType", json!("LEAD")),
            ("status", json!("New Lead")),
            ("ownerId", json!("RM001")),
            ("customerType", json!("NTB")),
            ("idNumber", json!("R1")),
            ("cif", Value::Null),
            ("product", json!("CARD")),
            ("channel", json!("MOBILE_APP")),
            ("journeyId", json!("J-2026-000123")),
            ("fullName", json!("Nguyen Van A")),
            ("phone", json!("+84901234567")),
            ("email", json!("a@example.com")),
        ] {
            assert_eq!(lead[field], value, "{field}");
        }
        for field in ["createdAt", "updatedAt"] {
            let t = OffsetDateTime::parse(lead[field].as_str().unwrap(), &Rfc3339).unwrap();
            assert_eq!(t.offset(), time::UtcOffset::UTC, "{field} is UTC");
        }
        assert_eq!(
            lead["history"],
            json!([{
                "from": null, "to": "New Lead", "at": lead["createdAt"], "requestId": "req-create-1",
                "channel": "MOBILE_APP", "reason": null
            }])
        );
        let r = app.get(&format!("{INT}/opportunities/{id}")).await;
        problem(r, 404, "NOT_FOUND").await;
        let r = app.get(&format!("{INT}/leads/unknown")).await;
        problem(r, 404, "NOT_FOUND").await;
    }

    async fn search_newest_first_without_history(app: TestApp) {
        let (_, a) = app.create(&ntb("R2", "CARD", "RM001")).await;
        let (_, b) = app.create(&ntb("R2", "CARD", "RM002")).await;
        let (_, c) = app.create(&ntb("R2", "LOAN", "RM001")).await;
        let (_, o) = app.create(&etb("R2", "CARD", "RM001")).await;
        app.create(&ntb("R3", "CARD", "RM001")).await;
        let all = app.search("R2").await;
        let ids = |v: &Value| v.as_array().unwrap().iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
        assert_eq!(ids(&all["leads"]), [c["id"].clone(), b["id"].clone(), a["id"].clone()]);
        assert_eq!(ids(&all["opportunities"]), [o["id"].clone()]);
        assert!(all["leads"][0].get("history").is_none());
        let (status, card) = app.call(SEARCH, &json!({"idNumber": "R2", "product": "CARD"})).await;
        assert_eq!(status, 200);
        assert_eq!(ids(&card["leads"]), [b["id"].clone(), a["id"].clone()]);
        let (_, none) = app.call(SEARCH, &json!({"idNumber": "NOBODY"})).await;
        assert_eq!(none, json!({"leads": [], "opportunities": []}));
        let r = app.post(SEARCH, &json!({"idNumber": "has space", "product": 3})).await;
        assert_eq!(fields(&problem(r, 422, "VALIDATION_FAILED").await), ["idNumber", "product"]);
    }

}

/// Closes records while reading them over and over: every read must be one snapshot, so the history it
/// shows ends at the status it shows. (Salesforce keeps records in the org and history beside it, so it
/// cannot offer one snapshot; SQLite and PostgreSQL must.)
async fn reads_see_one_snapshot(app: TestApp) {
    let app = std::sync::Arc::new(app);
    let mut ids = Vec::new();
    for i in 0..60 {
        let (status, body) = app.create(&ntb(&format!("SNAP{i}"), "CARD", "RM001")).await;
        assert_eq!(status, 201);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let ids = std::sync::Arc::new(ids);
    let writer = {
        let (app, ids) = (app.clone(), ids.clone());
        tokio::spawn(async move {
            for (i, id) in ids.iter().enumerate() {
                let (path, body) = if i % 2 == 0 {
                    (
                        LOST_LEAD,
                        json!({ "leadId": id, "status": "Close Lost", "channel": "MOBILE_APP", "reason": "AML_REJECTED" }),
                    )
                } else {
                    (CLOSE_WON, json!({ "leadId": id, "channel": "MOBILE_APP", "convertToOpportunity": false }))
                };
                let (status, answer) = app.call(path, &body).await;
                assert_eq!(status, 200, "{answer}");
            }
        })
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (app, ids, done) = (app.clone(), ids.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            // Until the closes are over, then once more.
            loop {
                let last_round = done.load(std::sync::atomic::Ordering::SeqCst);
                for id in ids.iter().skip(r) {
                    let lead = app.record("leads", id).await;
                    let last = lead["history"].as_array().unwrap().last().unwrap()["to"].clone();
                    assert_eq!(last, lead["status"], "one snapshot: {lead}");
                    reads += 1;
                }
                if last_round {
                    break reads;
                }
            }
        }));
    }
    writer.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 0);
    for id in ids.iter() {
        let lead = app.record("leads", id).await;
        assert_ne!(lead["status"], "New Lead", "every lead was closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_one_snapshot_on_sqlite() {
    reads_see_one_snapshot(spawn(Backend::Sqlite).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_one_snapshot_on_postgres() {
    reads_see_one_snapshot(spawn(Backend::Postgres).await).await
}
