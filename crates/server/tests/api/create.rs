//! SPEC §2.1 through HTTP: every row of the decision tables, and the response's exact shape.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

both_backends! {
    async fn ntb_created_existing_replaced(app: TestApp) {
        let r = app.post(CREATE, &ntb("079123456789", "CREDIT_CARD", "RM001")).await;
        assert_eq!(r.status(), 201, "N5");
        let location = r.headers().get("location").unwrap().to_str().unwrap().to_owned();
        let first: Value = r.json().await.unwrap();
        assert_eq!(keys(&first), ["closedRecordIds", "id", "ownerId", "recordType", "result", "status"]);
        assert_eq!(first["result"], "CREATED");
        assert_eq!(first["recordType"], "LEAD");
        assert_eq!(first["status"], "New Lead");
        assert_eq!(first["ownerId"], "RM001");
        assert_eq!(first["closedRecordIds"], json!([]));
        let id = first["id"].as_str().unwrap();
        assert_eq!(location, format!("{INT}/leads/{id}"));

        let (status, again) = app.create(&ntb("079123456789", "CREDIT_CARD", "RM001")).await;
        assert_eq!((status.as_u16(), &again["result"], &again["id"]), (200, &json!("EXISTING"), &first["id"]), "N3");

        let (status, replaced) = app.create(&ntb("079123456789", "CREDIT_CARD", "RM002")).await;
        assert_eq!(status, 201, "N4");
        assert_eq!(replaced["result"], "REPLACED");
        assert_eq!(replaced["recordType"], "LEAD");
        assert_eq!(replaced["ownerId"], "RM002");
        assert_eq!(replaced["closedRecordIds"], json!([id]));
        let old = app.record("leads", id).await;
        assert_eq!(old["status"], "Close Lost");
        assert_eq!(old["history"][1]["reason"], "OWNER_CHANGED");
    }

    async fn id_numbers_differing_only_by_case_are_one_customer(app: TestApp) {
        let (status, first) = app.create(&ntb("b1234567", "CARD", "RM001")).await;
        assert_eq!(status, 201);
        let (status, again) = app.create(&ntb("B1234567", "CARD", "RM001")).await;
        assert_eq!((status.as_u16(), &again["result"], &again["id"]), (200, &json!("EXISTING"), &first["id"]));
        let (status, opp) = app.create(&etb("B1234567", "LOAN", "RM001")).await;
        assert_eq!(status, 201);
        let (status, opp_again) = app.create(&etb("b1234567", "LOAN", "RM001")).await;
        assert_eq!((status.as_u16(), &opp_again["id"]), (200, &opp["id"]));
        // Kept (and answered) in the one upper-case form; found whichever case the search uses.
        let lead = app.record("leads", first["id"].as_str().unwrap()).await;
        assert_eq!(lead["idNumber"], "B1234567", "{lead}");
        for asked in ["b1234567", "B1234567"] {
            let found = app.search(asked).await;
            assert_eq!(found["leads"].as_array().unwrap().len(), 1, "{asked}: {found}");
            assert_eq!(found["opportunities"].as_array().unwrap().len(), 1, "{asked}: {found}");
        }
    }

    async fn etb_rows_never_touch_leads(app: TestApp) {
        let (_, lead) = app.create(&ntb("X1", "LOAN", "RM001")).await;
        let (status, e3) = app.create(&etb("X1", "LOAN", "RM001")).await;
        assert_eq!(
            (status.as_u16(), &e3["result"], &e3["recordType"], &e3["status"]),
            (201, &json!("CREATED"), &json!("OPPORTUNITY"), &json!("New Opportunity")),
            "E3"
        );
        let (status, e1) = app.create(&etb("X1", "LOAN", "RM001")).await;
        assert_eq!((status.as_u16(), &e1["result"], &e1["id"]), (200, &json!("EXISTING"), &e3["id"]), "E1");
        let (status, e2) = app.create(&etb("X1", "LOAN", "RM002")).await;
        assert_eq!((status.as_u16(), &e2["result"]), (201, &json!("REPLACED")), "E2");
        assert_eq!(e2["closedRecordIds"], json!([e3["id"]]));
        assert_eq!(app.record("opportunities", e3["id"].as_str().unwrap()).await["status"], "Close Lost");
        assert_eq!(app.record("leads", lead["id"].as_str().unwrap()).await["status"], "New Lead");
    }

    async fn ntb_checks_opportunities_first(app: TestApp) {
        let (_, opp) = app.create(&etb("X2", "CARD", "RM001")).await;
        let (status, n1) = app.create(&ntb("X2", "CARD", "RM001")).await;
        assert_eq!(
            (status.as_u16(), &n1["result"], &n1["recordType"], &n1["id"]),
            (200, &json!("EXISTING"), &json!("OPPORTUNITY"), &opp["id"]),
            "N1"
        );
        let (status, n2) = app.create(&ntb("X2", "CARD", "RM002")).await;
        assert_eq!(
            (status.as_u16(), &n2["result"], &n2["recordType"]),
            (201, &json!("REPLACED"), &json!("OPPORTUNITY")),
            "N2"
        );
        assert_eq!(n2["closedRecordIds"], json!([opp["id"]]));
    }

    async fn closed_opportunities_send_ntb_to_the_lead_check(app: TestApp) {
        let (_, opp) = app.create(&etb("X3", "CARD", "RM001")).await;
        let (s, _) = app.call(LOST_OPP, &json!({"opportunityId": opp["id"], "status": "Close Lost", "channel": "C"})).await;
        assert_eq!(s, 200);
        let (status, lead) = app.create(&ntb("X3", "CARD", "RM001")).await;
        assert_eq!((status.as_u16(), &lead["result"], &lead["recordType"]), (201, &json!("CREATED"), &json!("LEAD")));
        // A Close Won lead is final, not open: the next journey gets a new lead.
        let (s, _) =
            app.call(CLOSE_WON, &json!({"leadId": lead["id"], "channel": "C", "convertToOpportunity": false})).await;
        assert_eq!(s, 200);
        let (status, next) = app.create(&ntb("X3", "CARD", "RM001")).await;
        assert_eq!((status.as_u16(), &next["result"]), (201, &json!("CREATED")));
        assert_ne!(next["id"], lead["id"]);
    }

    async fn matching_is_per_product(app: TestApp) {
        let (_, card) = app.create(&ntb("X4", "CREDIT_CARD", "RM001")).await;
        let (status, loan) = app.create(&ntb("X4", "PERSONAL_LOAN", "RM002")).await;
        assert_eq!((status.as_u16(), &loan["result"]), (201, &json!("CREATED")));
        assert_eq!(app.record("leads", card["id"].as_str().unwrap()).await["status"], "New Lead");
    }

    async fn codes_are_trimmed_and_unknown_fields_ignored(app: TestApp) {
        let mut body = ntb("X5", "CARD", " RM001 ");
        body["somethingNew"] = json!({"nested": [1, 2, 3]});
        body["customer"]["extra"] = json!(true);
        let (status, r) = app.create(&body).await;
        assert_eq!(status, 201);
        assert_eq!(r["ownerId"], "RM001");
        let (status, r) = app.create(&ntb("X5", "CARD", "RM001")).await;
        assert_eq!((status.as_u16(), &r["result"]), (200, &json!("EXISTING")));
    }

}
