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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_busy_customer_does_not_starve_the_others() {
    let app = spawn_with(Backend::Postgres, |s| {
        s.postgres_max_connections = 4;
        s.postgres_acquire_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    // Something holds the busy customer's lock; twenty requests for that customer pile up behind it.
    let lock = hold_key(&app.postgres_url().unwrap(), "HOT/CARD").await;
    let busy: Vec<_> = (0..20)
        .map(|i| {
            let (client, base) = (app.client.clone(), app.base.clone());
            tokio::spawn(async move {
                let body = ntb("HOT", "CARD", &format!("RM{i}"));
                client.post(format!("{base}{CREATE}")).json(&body).send().await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Other customers and readiness are served meanwhile, with connections to spare.
    let (status, _) = app.create(&ntb("COLD", "CARD", "RM001")).await;
    assert_eq!(status, 201);
    assert_eq!(app.get("/health/ready").await.status(), 200);
    sqlx::Connection::close(lock).await.unwrap();
    for t in busy {
        assert!(matches!(t.await.unwrap(), Ok(200 | 201)));
    }
    let open =
        app.search("HOT").await["leads"].as_array().unwrap().iter().filter(|l| l["status"] == "New Lead").count();
    assert_eq!(open, 1);
}
