//! Requests for one key serialize; different keys proceed side by side (SPEC §2.1: one atomic step).

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::Value;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn identical_creates_make_exactly_one_record(app: TestApp) {
        let body = ntb("C1", "CARD", "RM001");
        let answers = join_all((0..48).map(|_| app.create(&body))).await;
        let created: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 201).map(|(_, b)| b).collect();
        assert_eq!(created.len(), 1, "exactly one 201");
        assert_eq!(created[0]["result"], "CREATED");
        let id = &created[0]["id"];
        for (status, body) in answers.iter().filter(|(s, _)| *s != 201) {
            assert_eq!(*status, 200);
            assert_eq!(body["result"], "EXISTING");
            assert_eq!(&body["id"], id, "every answer names the same record");
        }
        assert_eq!(app.search("C1").await["leads"].as_array().unwrap().len(), 1);
    }

    async fn competing_owners_leave_exactly_one_open_record(app: TestApp) {
        let bodies: Vec<Value> = (0..48).map(|i| ntb("C2", "CARD", &format!("RM{}", i % 6))).collect();
        let answers = join_all(bodies.iter().map(|b| app.create(b))).await;
        assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 201));
        let leads = app.search("C2").await["leads"].as_array().unwrap().clone();
        let open: Vec<_> = leads.iter().filter(|r| r["status"] == "New Lead").collect();
        assert_eq!(open.len(), 1, "one open lead");
        // Every record closed by a REPLACED answer really is closed, and every answer's record exists.
        for (_, body) in &answers {
            for closed in body["closedRecordIds"].as_array().unwrap() {
                let rec = leads.iter().find(|r| &r["id"] == closed).expect("closed record exists");
                assert_eq!(rec["status"], "Close Lost");
            }
            assert!(leads.iter().any(|r| r["id"] == body["id"]));
        }
        // The one open lead belongs to the owner of the last answer that created a record.
        let ids: HashSet<_> = answers.iter().map(|(_, b)| b["id"].clone()).collect();
        assert!(ids.contains(&open[0]["id"]));
    }

    async fn different_keys_all_succeed_side_by_side(app: TestApp) {
        let bodies: Vec<Value> = (0..64).map(|i| etb(&format!("K{i}"), "CARD", "RM001")).collect();
        let answers = join_all(bodies.iter().map(|b| app.create(b))).await;
        assert!(answers.iter().all(|(s, b)| *s == 201 && b["result"] == "CREATED"));
        let ids: HashSet<_> = answers.iter().map(|(_, b)| b["id"].clone()).collect();
        assert_eq!(ids.len(), 64);
    }

}
