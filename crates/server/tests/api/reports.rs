//! The reports through HTTP: what they answer on every backend, who may read them, and how bad parameters
//! are refused.

use integration_service::api::auth::{ApiKey, ApiKeys, Role};
use lifecycle::Channel;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

const FUNNEL: &str = "/integration-service/int/api/crm/v1/reports/funnel";
const REJECTIONS: &str = "/integration-service/int/api/crm/v1/reports/rejections";
const HANDOVERS: &str = "/integration-service/int/api/crm/v1/reports/handovers";
const STALE: &str = "/integration-service/int/api/crm/v1/reports/stale";

async fn json_of(app: &TestApp, path: &str) -> Value {
    let r = app.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// Two NTB leads on MOBILE_APP (one replaced, so RM001 → RM002, then won; one lost `NCB_REJECTED`), and an
/// ETB opportunity on LENDING_APP lost `AML_REJECTED`, plus one left open.
pub async fn seed(app: &TestApp) {
    let (_, first) = app.create(&ntb("R1", "CREDIT_CARD", "RM001")).await;
    let (status, second) = app.create(&ntb("R1", "CREDIT_CARD", "RM002")).await;
    assert_eq!((status.as_u16(), second["result"].as_str()), (201, Some("REPLACED")), "{first}");
    let (s, _) = app.call(CLOSE_WON, &json!({"leadId": second["id"], "channel": "MOBILE_APP"})).await;
    assert_eq!(s, 200);
    let (_, lost) = app.create(&ntb("R2", "CREDIT_CARD", "RM001")).await;
    let body = json!({"leadId": lost["id"], "status": "Close Lost", "channel": "MOBILE_APP", "reason": "NCB_REJECTED"});
    assert_eq!(app.call(LOST_LEAD, &body).await.0, 200);
    let (_, opp) = app.create(&etb("R3", "PERSONAL_LOAN", "RM003")).await;
    let body =
        json!({"opportunityId": opp["id"], "status": "Close Lost", "channel": "LENDING_APP", "reason": "AML_REJECTED"});
    assert_eq!(app.call(LOST_OPP, &body).await.0, 200);
    let (s, _) = app.create(&etb("R4", "PERSONAL_LOAN", "RM003")).await;
    assert_eq!(s, 201);
}

both_backends! {
    async fn reports_answer_what_the_records_say(app: TestApp) {
        seed(&app).await;
        let funnel = json_of(&app, &format!("{FUNNEL}?groupBy=channel")).await;
        assert_eq!(funnel["groupBy"], "channel");
        assert_eq!(funnel["truncated"], false);
        let groups = funnel["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2, "{funnel}");
        let (lending, mobile) = (&groups[0], &groups[1]);
        assert_eq!(lending["group"], "LENDING_APP");
        assert_eq!(
            [&lending["leads"], &lending["opportunities"], &lending["converted"], &lending["closeWon"], &lending["closeLost"], &lending["open"]],
            [&json!(0), &json!(2), &json!(0), &json!(0), &json!(1), &json!(1)]
        );
        assert_eq!(lending["conversionRate"], 0.0);
        assert_eq!(mobile["group"], "MOBILE_APP");
        assert_eq!(
            [&mobile["leads"], &mobile["opportunities"], &mobile["converted"], &mobile["closeWon"], &mobile["closeLost"], &mobile["open"]],
            [&json!(3), &json!(0), &json!(1), &json!(1), &json!(2), &json!(0)]
        );
        assert!((mobile["conversionRate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert!(mobile["medianSecondsToClose"].as_f64().unwrap() >= 0.0);

        let owners = json_of(&app, &format!("{FUNNEL}?groupBy=owner&channel=MOBILE_APP")).await;
        let names: Vec<&str> = owners["groups"].as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap()).collect();
        assert_eq!(names, ["RM001", "RM002"]);

        let rejections = json_of(&app, REJECTIONS).await;
        assert_eq!(
            rejections["rows"],
            json!([
                {"reason": "AML_REJECTED", "channel": "LENDING_APP", "product": "PERSONAL_LOAN", "count": 1},
                {"reason": "NCB_REJECTED", "channel": "MOBILE_APP", "product": "CREDIT_CARD", "count": 1},
                {"reason": "OWNER_CHANGED", "channel": "MOBILE_APP", "product": "CREDIT_CARD", "count": 1},
            ])
        );
        let handovers = json_of(&app, &format!("{HANDOVERS}?product=CREDIT_CARD")).await;
        assert_eq!(handovers["rows"], json!([{"fromOwner": "RM001", "toOwner": "RM002", "count": 1}]));

        // Nothing is a day old; the page says where the cut is.
        let stale = json_of(&app, &format!("{STALE}?olderThanDays=1&limit=10")).await;
        assert_eq!(stale["records"], json!([]));
        assert_eq!(stale["nextCursor"], Value::Null);
        assert!(stale["cutoff"].as_str().is_some());

        // A period before any record.
        let empty = json_of(&app, &format!("{FUNNEL}?from=2020-01-01&to=2020-01-31")).await;
        assert_eq!(empty["groups"], json!([]));
        assert_eq!(empty["from"], "2020-01-01T00:00:00Z");
        assert_eq!(empty["to"], "2020-02-01T00:00:00Z", "a day given as `to` is included whole");
    }
}

fn reporting_keys() -> (String, String, ApiKeys) {
    let (report, r) = ApiKey::generate_with(&Channel::parse("ANALYTICS").unwrap(), Role::Reporting).unwrap();
    let (mobile, m) = ApiKey::generate(&Channel::parse("MOBILE_APP").unwrap()).unwrap();
    (report, mobile, ApiKeys(vec![r, m]))
}

async fn get_with(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(format!("{}{path}", app.base));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_need_a_reporting_key_and_it_reads_nothing_else() {
    let (report, mobile, config) = reporting_keys();
    let app = spawn_app_with(move |s| s.api_keys = config).await;
    for path in [FUNNEL, REJECTIONS, HANDOVERS, STALE] {
        assert_eq!(get_with(&app, path, Some(&report)).await.status(), 200, "{path}");
        problem(get_with(&app, path, None).await, 401, "UNAUTHENTICATED").await;
        problem(get_with(&app, path, Some("crm_guess")).await, 401, "UNAUTHENTICATED").await;
        problem(get_with(&app, path, Some(&mobile)).await, 403, "FORBIDDEN").await;
    }
    // The reporting key cannot create, close or read records.
    let r = app.client.post(format!("{}{CREATE}", app.base)).bearer_auth(&report).json(&ntb("K1", "CARD", "RM001"));
    problem(r.send().await.unwrap(), 403, "FORBIDDEN").await;
    let r = app.client.post(format!("{}{SEARCH}", app.base)).bearer_auth(&report).json(&json!({"idNumber": "K1"}));
    problem(r.send().await.unwrap(), 403, "FORBIDDEN").await;
    problem(get_with(&app, &format!("{INT}/leads/x"), Some(&report)).await, 403, "FORBIDDEN").await;
    // The channel's key still works where it belongs.
    let r = app.client.post(format!("{}{CREATE}", app.base)).bearer_auth(&mobile).json(&ntb("K1", "CARD", "RM001"));
    assert_eq!(r.send().await.unwrap().status(), 201);
    let funnel: Value = get_with(&app, FUNNEL, Some(&report)).await.json().await.unwrap();
    assert_eq!(funnel["groups"][0]["leads"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_each_named() {
    let app = spawn_app().await;
    let bad = |path: String| {
        let app = &app;
        async move { problem(app.get(&path).await, 422, "VALIDATION_FAILED").await }
    };
    let p = bad(format!("{FUNNEL}?from=yesterday&to=2026-13-01&groupBy=week&channel=tab%09here&product=")).await;
    assert_eq!(fields(&p), ["channel", "from", "groupBy", "product", "to"], "{p}");
    let p = bad(format!("{STALE}?cursor=1.2.3&channel=%20")).await;
    assert_eq!(fields(&p), ["channel", "cursor"], "{p}");
    let p = bad(format!("{HANDOVERS}?from=2026-01-01&from=2026-01-02&colour=red")).await;
    assert_eq!(fields(&p), ["colour", "from"], "{p}");
    let p = bad(format!("{STALE}?olderThanDays=0&limit=501&cursor=abc")).await;
    assert_eq!(fields(&p), ["cursor", "limit", "olderThanDays"], "{p}");
    let p = bad(format!("{STALE}?olderThanDays=-1&limit=1e3")).await;
    assert_eq!(fields(&p), ["limit", "olderThanDays"], "{p}");
    // Any two dates make a period: a span over 366 days keeps its last 366, a `to` before `from` is empty.
    let long = json_of(&app, &format!("{FUNNEL}?from=2024-01-01&to=2026-01-01")).await;
    assert_eq!(
        (long["from"].as_str(), long["to"].as_str()),
        (Some("2025-01-01T00:00:00Z"), Some("2026-01-02T00:00:00Z"))
    );
    let swapped = json_of(&app, &format!("{REJECTIONS}?from=2026-02-01&to=2026-01-01")).await;
    assert_eq!(
        (swapped["from"].as_str(), swapped["to"].as_str()),
        (Some("2026-02-01T00:00:00Z"), Some("2026-02-01T00:00:00Z"))
    );
    assert_eq!(swapped["rows"], json!([]));
    // The ends of the calendar are periods too; a cursor past the end of time is an empty last page.
    let last = json_of(&app, &format!("{HANDOVERS}?to=9999-12-31")).await;
    assert_eq!(last["to"].as_str(), Some("9999-12-31T23:59:59.999999999Z"));
    let first = json_of(&app, &format!("{FUNNEL}?to=0001-01-01T00:00:00%2B14:00")).await;
    assert_eq!((first["from"].as_str(), first["groups"].clone()), (Some("0000-12-01T10:00:00Z"), json!([])));
    let far = json_of(&app, &format!("{STALE}?cursor=999999999999999999.999999999999999999&olderThanDays=1")).await;
    assert_eq!((far["records"].clone(), far["nextCursor"].clone()), (json!([]), Value::Null));
    // RFC 3339 instants are taken as they are.
    let ok =
        json_of(&app, &format!("{FUNNEL}?from=2026-01-01T10:00:00%2B07:00&to=2026-01-02T00:00:00Z&groupBy=day")).await;
    assert_eq!((ok["from"].as_str(), ok["to"].as_str()), (Some("2026-01-01T03:00:00Z"), Some("2026-01-02T00:00:00Z")));
}
