//! SPEC §2.3 and §2.4 through HTTP (paths without `/int`).

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn opportunity_close_lost(app: TestApp) {
        let (_, opp) = app.create(&etb("L1", "LOAN", "RM001")).await;
        let body =
            json!({"opportunityId": opp["id"], "status": "Close Lost", "channel": "LENDING_APP", "reason": "NCB_REJECTED"});
        let (status, lost) = app.call(LOST_OPP, &body).await;
        assert_eq!(status, 200);
        assert_eq!(lost, json!({"opportunityId": opp["id"], "status": "Close Lost"}));
        let (status, again) = app.call(LOST_OPP, &body).await;
        assert_eq!((status.as_u16(), &again), (200, &lost), "already Close Lost: unchanged");
        let rec = app.record("opportunities", opp["id"].as_str().unwrap()).await;
        let history = rec["history"].as_array().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1]["from"], "New Opportunity");
        assert_eq!(history[1]["to"], "Close Lost");
        assert_eq!(history[1]["reason"], "NCB_REJECTED");
        assert_eq!(history[1]["channel"], "LENDING_APP");
    }

    async fn lead_close_lost_and_won_is_final(app: TestApp) {
        let (_, lead) = app.create(&ntb("L2", "CARD", "RM001")).await;
        let (status, lost) = app
            .call(
                LOST_LEAD,
                &json!({"leadId": lead["id"], "status": "Close Lost", "channel": "C", "reason": "AML_REJECTED"}),
            )
            .await;
        assert_eq!((status.as_u16(), &lost), (200, &json!({"leadId": lead["id"], "status": "Close Lost"})));

        let (_, lead2) = app.create(&ntb("L2", "CARD", "RM001")).await;
        app.call(CLOSE_WON, &json!({"leadId": lead2["id"], "channel": "C"})).await;
        let r = app.post(LOST_LEAD, &json!({"leadId": lead2["id"], "status": "Close Lost", "channel": "C"})).await;
        problem(r, 409, "INVALID_TRANSITION").await;
        assert_eq!(app.record("leads", lead2["id"].as_str().unwrap()).await["status"], "Close Won");
    }

    async fn only_close_lost_is_accepted_and_ids_must_exist(app: TestApp) {
        let (_, lead) = app.create(&ntb("L3", "CARD", "RM001")).await;
        for status in ["Close Won", "New Lead", "close lost", ""] {
            let r = app.post(LOST_LEAD, &json!({"leadId": lead["id"], "status": status, "channel": "C"})).await;
            assert_eq!(fields(&problem(r, 422, "VALIDATION_FAILED").await), ["status"], "{status}");
        }
        let r = app.post(LOST_LEAD, &json!({})).await;
        assert_eq!(fields(&problem(r, 422, "VALIDATION_FAILED").await), ["channel", "leadId", "status"]);
        let r = app.post(LOST_OPP, &json!({"leadId": lead["id"], "status": "Close Lost", "channel": "C"})).await;
        assert_eq!(fields(&problem(r, 422, "VALIDATION_FAILED").await), ["opportunityId"]);
        let r = app.post(LOST_OPP, &json!({"opportunityId": lead["id"], "status": "Close Lost", "channel": "C"})).await;
        problem(r, 404, "NOT_FOUND").await;
        let r = app.post(LOST_LEAD, &json!({"leadId": "missing", "status": "Close Lost", "channel": "C"})).await;
        problem(r, 404, "NOT_FOUND").await;
        // The close-lost paths have no /int segment; with it there is nothing.
        let r = app
            .post(
                &format!("{INT}/update-lead-status"),
                &json!({"leadId": lead["id"], "status": "Close Lost", "channel": "C"}),
            )
            .await;
        problem(r, 404, "NOT_FOUND").await;
        assert_eq!(app.record("leads", lead["id"].as_str().unwrap()).await["status"], "New Lead");
    }

}
