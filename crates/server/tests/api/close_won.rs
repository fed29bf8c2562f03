//! SPEC §2.2 through HTTP.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn opportunity_close_won_and_repeat(app: TestApp) {
        let (_, opp) = app.create(&etb("W1", "CARD", "RM001")).await;
        let body = json!({"opportunityId": opp["id"], "channel": "LENDING_APP", "reason": "DISBURSED"});
        let (status, won) = app.call(CLOSE_WON, &body).await;
        assert_eq!(status, 200);
        assert_eq!(won, json!({"lead": null, "opportunity": {"id": opp["id"], "status": "Close Won"}}));
        let (status, again) = app.call(CLOSE_WON, &body).await;
        assert_eq!((status.as_u16(), &again), (200, &won), "same body as the first time");
        let r = app.post(LOST_OPP, &json!({"opportunityId": opp["id"], "status": "Close Lost", "channel": "C"})).await;
        problem(r, 409, "INVALID_TRANSITION").await;
        let rec = app.record("opportunities", opp["id"].as_str().unwrap()).await;
        assert_eq!(rec["status"], "Close Won");
        assert_eq!(rec["history"].as_array().unwrap().len(), 2);
        assert_eq!(rec["history"][1]["reason"], "DISBURSED");
    }

    async fn lead_converts_by_default_and_only_once(app: TestApp) {
        let (_, lead) = app.create(&ntb("W2", "CARD", "RM001")).await;
        let body = json!({"leadId": lead["id"], "channel": "MOBILE_APP"});
        let (status, won) = app.call(CLOSE_WON, &body).await;
        assert_eq!(status, 200);
        assert_eq!(won["lead"], json!({"id": lead["id"], "status": "Close Won"}));
        assert_eq!(won["opportunity"]["status"], "Close Won");
        let opp_id = won["opportunity"]["id"].as_str().unwrap();
        let (_, again) = app.call(CLOSE_WON, &body).await;
        assert_eq!(again, won, "no second conversion");
        let opp = app.record("opportunities", opp_id).await;
        let lead_rec = app.record("leads", lead["id"].as_str().unwrap()).await;
        assert_eq!(opp["convertedFromLeadId"], lead["id"]);
        assert_eq!(lead_rec["convertedOpportunityId"], opp_id);
        for field in
            ["ownerId", "idNumber", "product", "channel", "journeyId", "customerType", "fullName", "email", "phone"]
        {
            assert_eq!(opp[field], lead_rec[field], "{field} carried over");
        }
        assert_eq!(app.search("W2").await["opportunities"].as_array().unwrap().len(), 1);
    }

    async fn lead_without_conversion(app: TestApp) {
        let (_, lead) = app.create(&ntb("W3", "CARD", "RM001")).await;
        let (status, won) =
            app.call(CLOSE_WON, &json!({"leadId": lead["id"], "channel": "C", "convertToOpportunity": false})).await;
        assert_eq!(status, 200);
        assert_eq!(won, json!({"lead": {"id": lead["id"], "status": "Close Won"}, "opportunity": null}));
        assert!(app.search("W3").await["opportunities"].as_array().unwrap().is_empty());
    }

    async fn close_lost_records_cannot_be_won(app: TestApp) {
        let (_, lead) = app.create(&ntb("W4", "CARD", "RM001")).await;
        app.call(LOST_LEAD, &json!({"leadId": lead["id"], "status": "Close Lost", "channel": "C"})).await;
        let r = app.post(CLOSE_WON, &json!({"leadId": lead["id"], "channel": "C"})).await;
        let p = problem(r, 409, "INVALID_TRANSITION").await;
        assert!(p["detail"].as_str().unwrap().contains("Close Lost"));
        assert!(app.search("W4").await["opportunities"].as_array().unwrap().is_empty(), "nothing converted");
    }

    async fn unknown_ids_and_bad_bodies(app: TestApp) {
        let (_, lead) = app.create(&ntb("W5", "CARD", "RM001")).await;
        let r = app.post(CLOSE_WON, &json!({"opportunityId": "nope", "channel": "C"})).await;
        problem(r, 404, "NOT_FOUND").await;
        // A lead's id is not an opportunity's.
        let r = app.post(CLOSE_WON, &json!({"opportunityId": lead["id"], "channel": "C"})).await;
        problem(r, 404, "NOT_FOUND").await;

        let cases: Vec<(Value, Vec<&str>)> = vec![
            (json!({"channel": "C"}), vec!["leadId", "opportunityId"]),
            (json!({"leadId": "a", "opportunityId": "b", "channel": "C"}), vec!["leadId", "opportunityId"]),
            (json!({"opportunityId": "b", "convertToOpportunity": true, "channel": "C"}), vec!["convertToOpportunity"]),
            (json!({"leadId": "a", "convertToOpportunity": "yes"}), vec!["channel", "convertToOpportunity"]),
            (json!({"leadId": 7, "channel": ""}), vec!["channel", "leadId"]),
            (json!({"leadId": "", "channel": "C", "reason": 1}), vec!["leadId", "reason"]),
        ];
        for (body, expected) in cases {
            let p = problem(app.post(CLOSE_WON, &body).await, 422, "VALIDATION_FAILED").await;
            assert_eq!(fields(&p), expected, "{body}");
        }
        assert_eq!(app.record("leads", lead["id"].as_str().unwrap()).await["status"], "New Lead", "nothing changed");
    }

}
