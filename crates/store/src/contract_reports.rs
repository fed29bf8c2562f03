//! The reports every adapter of [`Reports`] must answer, with exact numbers, written once.
//!
//! An adapter's test file calls [`crate::reports_suite!`] with the same maker as [`crate::contract_suite!`].
//! The records are made through the storage port (so the SQL adapters answer from their records and
//! history, and the Salesforce adapter from its local store's audit); the expected figures follow from the
//! scenario in [`seed`].

use std::collections::HashMap;
use std::sync::Arc;

use lifecycle::*;
use time::{Duration, OffsetDateTime};

use crate::contract::request;
use crate::reports::{median, FunnelRow, GroupBy, HandoverRow, Period, RejectionRow, StaleQuery};
use crate::{Backend, RequestContext};

/// Expands to one `#[tokio::test]` per reports case, each on a fresh store from `$make`.
#[macro_export]
macro_rules! reports_suite {
    ($make:path) => {
        $crate::reports_suite!(@cases $make;
            reports_funnel_by_every_grouping,
            reports_funnel_filters_and_periods,
            reports_rejections_by_reason_channel_product,
            reports_handovers_between_owners,
            reports_handovers_count_each_replacement_once,
            reports_stale_pages,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                $crate::contract_reports::$case(store).await;
            }
        )*
    };
}

const MOBILE: &str = "MOBILE_APP";
const LENDING: &str = "LENDING_APP";

fn ctx(channel: &str, reason: Option<&str>) -> RequestContext {
    RequestContext::new("rep", Channel::parse(channel).unwrap(), reason.map(|r| Reason::parse(r).unwrap()))
}

/// The records the reports are computed from, by letter.
pub struct Seeded {
    pub ids: HashMap<char, RecordId>,
    pub start: OffsetDateTime,
}

/// The scenario, all made now:
/// - MOBILE_APP, CREDIT_CARD, NTB leads: A (RM001) replaced by B (RM002); B won and converted into C;
///   D (RM001) lost `NCB_REJECTED`; E (RM001) open.
/// - LENDING_APP, PERSONAL_LOAN, ETB opportunities of RM003: F lost `AML_REJECTED`; G won; H replaced by
///   I (RM001, open); J and K lost `NCB_REJECTED`; L replaced by M (RM001, open).
pub async fn seed(store: &dyn Backend) -> Seeded {
    let start = OffsetDateTime::now_utc();
    let mut ids = HashMap::new();
    let create = |customer_type, who: &str, channel: &str, product: &str, owner: &str| {
        let mut r = request(customer_type, who, product, owner);
        r.channel = Channel::parse(channel).unwrap();
        r
    };
    let ntb = |who: &str, owner: &str| create(CustomerType::Ntb, who, MOBILE, "CREDIT_CARD", owner);
    let etb = |who: &str, owner: &str| create(CustomerType::Etb, who, LENDING, "PERSONAL_LOAN", owner);
    let m = ctx(MOBILE, None);
    let l = ctx(LENDING, None);

    ids.insert('A', store.create(&ntb("C1", "RM001"), &m).await.unwrap().id);
    ids.insert('B', store.create(&ntb("C1", "RM002"), &m).await.unwrap().id);
    let won = store.close_won(RecordType::Lead, &ids[&'B'], true, &m).await.unwrap();
    ids.insert('C', won.opportunity.expect("converted").id);
    ids.insert('D', store.create(&ntb("C2", "RM001"), &m).await.unwrap().id);
    store.close_lost(RecordType::Lead, &ids[&'D'], &ctx(MOBILE, Some("NCB_REJECTED"))).await.unwrap();
    ids.insert('E', store.create(&ntb("C3", "RM001"), &m).await.unwrap().id);

    for (letter, who) in [('F', "C4"), ('G', "C5"), ('H', "C6"), ('J', "C7"), ('K', "C8"), ('L', "C9")] {
        ids.insert(letter, store.create(&etb(who, "RM003"), &l).await.unwrap().id);
    }
    store.close_lost(RecordType::Opportunity, &ids[&'F'], &ctx(LENDING, Some("AML_REJECTED"))).await.unwrap();
    store.close_won(RecordType::Opportunity, &ids[&'G'], true, &l).await.unwrap();
    ids.insert('I', store.create(&etb("C6", "RM001"), &l).await.unwrap().id);
    for letter in ['J', 'K'] {
        store.close_lost(RecordType::Opportunity, &ids[&letter], &ctx(LENDING, Some("NCB_REJECTED"))).await.unwrap();
    }
    ids.insert('M', store.create(&etb("C9", "RM001"), &l).await.unwrap().id);
    Seeded { ids, start }
}

/// A period around the scenario (it was all made within the last minute).
fn around(s: &Seeded) -> Period {
    Period::new(s.start - Duration::hours(1), OffsetDateTime::now_utc() + Duration::hours(1))
}

/// From the UTC midnight before the scenario to the one after it: whole days, which the adapters may answer
/// from daily counts rather than from the changes.
fn whole_days(s: &Seeded) -> Period {
    let midnight = |t: OffsetDateTime| t.to_offset(time::UtcOffset::UTC).replace_time(time::Time::MIDNIGHT);
    Period::new(midnight(s.start), midnight(OffsetDateTime::now_utc()) + Duration::days(1))
}

/// The median time to close of `letters`, from each record's own history (creation to closing).
async fn median_of(store: &dyn Backend, s: &Seeded, letters: &str) -> Option<f64> {
    let mut seconds = Vec::new();
    for letter in letters.chars() {
        let id = &s.ids[&letter];
        let got = match store.get(RecordType::Lead, id).await.unwrap() {
            Some(r) => r,
            None => store.get(RecordType::Opportunity, id).await.unwrap().expect("seeded"),
        };
        let created = got.history.first().expect("a creation entry").at;
        let closed = got.history.iter().find(|h| h.from.is_some() && !h.to.is_open()).expect("closed").at;
        seconds.push((closed - created).as_seconds_f64());
    }
    median(&mut seconds)
}

#[allow(clippy::too_many_arguments)]
fn row(group: &str, leads: u64, opportunities: u64, converted: u64, won: u64, lost: u64, open: u64) -> FunnelRow {
    FunnelRow {
        group: group.into(),
        leads,
        opportunities,
        converted,
        close_won: won,
        close_lost: lost,
        open,
        median_seconds_to_close: None,
    }
}

/// Compares counts exactly and medians to the millisecond (the stores keep microseconds).
fn assert_funnel(got: &[FunnelRow], want: &[FunnelRow], what: &str) {
    let counts = |rows: &[FunnelRow]| -> Vec<FunnelRow> {
        rows.iter().map(|r| FunnelRow { median_seconds_to_close: None, ..r.clone() }).collect()
    };
    assert_eq!(counts(got), counts(want), "{what}");
    for (g, w) in got.iter().zip(want) {
        match (g.median_seconds_to_close, w.median_seconds_to_close) {
            (Some(g_m), Some(w_m)) => assert!((g_m - w_m).abs() < 0.002, "{what} {}: median {g_m} != {w_m}", g.group),
            (g_m, w_m) => assert_eq!(g_m, w_m, "{what} {}: median", g.group),
        }
    }
}

fn with_median(mut r: FunnelRow, m: Option<f64>) -> FunnelRow {
    r.median_seconds_to_close = m;
    r
}

pub async fn reports_funnel_by_every_grouping(store: Arc<dyn Backend>) {
    let s = seed(&*store).await;
    let p = around(&s);
    let st = &*store;

    let got = store.funnel(&p, GroupBy::Channel).await.unwrap();
    assert!(!got.truncated);
    let want = [
        with_median(row(LENDING, 0, 8, 0, 1, 5, 2), median_of(st, &s, "FGHJKL").await),
        with_median(row(MOBILE, 4, 0, 1, 1, 2, 1), median_of(st, &s, "ABD").await),
    ];
    assert_funnel(&got.rows, &want, "by channel");
    assert_eq!(got.rows[0].conversion_rate(), Some(0.125));
    assert_eq!(got.rows[1].conversion_rate(), Some(0.25));

    let got = store.funnel(&p, GroupBy::Product).await.unwrap();
    let want = [
        with_median(row("CREDIT_CARD", 4, 0, 1, 1, 2, 1), median_of(st, &s, "ABD").await),
        with_median(row("PERSONAL_LOAN", 0, 8, 0, 1, 5, 2), median_of(st, &s, "FGHJKL").await),
    ];
    assert_funnel(&got.rows, &want, "by product");

    let got = store.funnel(&p, GroupBy::Owner).await.unwrap();
    let want = [
        with_median(row("RM001", 3, 2, 0, 0, 2, 3), median_of(st, &s, "AD").await),
        with_median(row("RM002", 1, 0, 1, 1, 0, 0), median_of(st, &s, "B").await),
        with_median(row("RM003", 0, 6, 0, 1, 5, 0), median_of(st, &s, "FGHJKL").await),
    ];
    assert_funnel(&got.rows, &want, "by owner");
    assert_eq!(got.rows[0].conversion_rate(), Some(0.0));
    assert_eq!(got.rows[1].conversion_rate(), Some(1.0));

    let got = store.funnel(&p, GroupBy::Day).await.unwrap();
    let today = |t: OffsetDateTime| t.date().to_string();
    let days: Vec<String> = got.rows.iter().map(|r| r.group.clone()).collect();
    let (first, last) = (today(s.start), today(OffsetDateTime::now_utc()));
    assert!(days.iter().all(|d| *d == first || *d == last), "{days:?}");
    if first == last {
        let want = [with_median(row(&first, 4, 8, 1, 2, 7, 3), median_of(st, &s, "ABDFGHJKL").await)];
        assert_funnel(&got.rows, &want, "by day");
    }
    let total = |f: fn(&FunnelRow) -> u64| got.rows.iter().map(f).sum::<u64>();
    assert_eq!((total(|r| r.leads), total(|r| r.opportunities), total(|r| r.open)), (4, 8, 3));
}

pub async fn reports_funnel_filters_and_periods(store: Arc<dyn Backend>) {
    let s = seed(&*store).await;
    let st = &*store;
    let mobile = around(&s).with_filters(Some(Channel::parse(MOBILE).unwrap()), None);
    let got = store.funnel(&mobile, GroupBy::Owner).await.unwrap();
    let want = [
        with_median(row("RM001", 3, 0, 0, 0, 2, 1), median_of(st, &s, "AD").await),
        with_median(row("RM002", 1, 0, 1, 1, 0, 0), median_of(st, &s, "B").await),
    ];
    assert_funnel(&got.rows, &want, "MOBILE_APP by owner");

    let loans = around(&s).with_filters(None, Some(Product::parse("PERSONAL_LOAN").unwrap()));
    let got = store.funnel(&loans, GroupBy::Channel).await.unwrap();
    assert_funnel(
        &got.rows,
        &[with_median(row(LENDING, 0, 8, 0, 1, 5, 2), median_of(st, &s, "FGHJKL").await)],
        "loans by channel",
    );
    let nothing =
        around(&s).with_filters(Some(Channel::parse(MOBILE).unwrap()), Some(Product::parse("PERSONAL_LOAN").unwrap()));
    assert_eq!(store.funnel(&nothing, GroupBy::Channel).await.unwrap().rows, vec![]);

    // Periods are half-open and select by creation time.
    let later =
        Period::new(OffsetDateTime::now_utc() + Duration::hours(1), OffsetDateTime::now_utc() + Duration::days(2));
    assert_eq!(store.funnel(&later, GroupBy::Day).await.unwrap().rows, vec![]);
    assert_eq!(store.rejections(&later).await.unwrap().rows, vec![]);
    assert_eq!(store.handovers(&later).await.unwrap().rows, vec![]);
    // A `to` before `from` is an empty period, even around every record.
    let empty = Period::new(OffsetDateTime::now_utc() + Duration::hours(1), s.start - Duration::hours(1));
    assert!(empty.is_empty());
    assert_eq!(store.funnel(&empty, GroupBy::Channel).await.unwrap().rows, vec![]);
    assert_eq!(store.rejections(&empty).await.unwrap().rows, vec![]);
    let before = Period::new(s.start - Duration::days(3), s.start - Duration::days(1));
    assert_eq!(store.funnel(&before, GroupBy::Owner).await.unwrap().rows, vec![]);
}

fn rejection(reason: &str, channel: &str, product: &str, count: u64) -> RejectionRow {
    RejectionRow {
        reason: Some(Reason::parse(reason).unwrap()),
        channel: Channel::parse(channel).unwrap(),
        product: Product::parse(product).unwrap(),
        count,
    }
}

pub async fn reports_rejections_by_reason_channel_product(store: Arc<dyn Backend>) {
    let s = seed(&*store).await;
    // A ragged period is answered from the changes, whole days may be from daily counts: the same answer,
    // before and after the backend folds what the writes added.
    for (period, what) in [(around(&s), "ragged"), (whole_days(&s), "whole days"), (whole_days(&s), "folded")] {
        if what == "folded" {
            store.fold().await.unwrap();
        }
        let got = store.rejections(&period).await.unwrap();
        assert!(!got.truncated);
        assert_eq!(
            got.rows,
            vec![
                rejection("NCB_REJECTED", LENDING, "PERSONAL_LOAN", 2),
                rejection("OWNER_CHANGED", LENDING, "PERSONAL_LOAN", 2),
                rejection("AML_REJECTED", LENDING, "PERSONAL_LOAN", 1),
                rejection("NCB_REJECTED", MOBILE, "CREDIT_CARD", 1),
                rejection("OWNER_CHANGED", MOBILE, "CREDIT_CARD", 1),
            ],
            "{what}: most frequent first, then by reason, channel, product"
        );
        let cards = period.with_filters(None, Some(Product::parse("CREDIT_CARD").unwrap()));
        assert_eq!(
            store.rejections(&cards).await.unwrap().rows,
            vec![
                rejection("NCB_REJECTED", MOBILE, "CREDIT_CARD", 1),
                rejection("OWNER_CHANGED", MOBILE, "CREDIT_CARD", 1)
            ],
            "{what}"
        );
    }
}

fn handover(from: &str, to: &str, count: u64) -> HandoverRow {
    HandoverRow { from_owner: OwnerId::parse(from).unwrap(), to_owner: OwnerId::parse(to).unwrap(), count }
}

pub async fn reports_handovers_between_owners(store: Arc<dyn Backend>) {
    let s = seed(&*store).await;
    for (period, what) in [(around(&s), "ragged"), (whole_days(&s), "whole days"), (whole_days(&s), "folded")] {
        if what == "folded" {
            store.fold().await.unwrap();
        }
        let got = store.handovers(&period).await.unwrap();
        assert_eq!(got.rows, vec![handover("RM003", "RM001", 2), handover("RM001", "RM002", 1)], "{what}");
        let mobile = period.with_filters(Some(Channel::parse(MOBILE).unwrap()), None);
        assert_eq!(store.handovers(&mobile).await.unwrap().rows, vec![handover("RM001", "RM002", 1)], "{what}");
    }
}

/// One customer's lead handed over twice (RM001, then RM002, then RM003): each creation counts the record it
/// replaced at its own instant, not the key's earlier replacements.
pub async fn reports_handovers_count_each_replacement_once(store: Arc<dyn Backend>) {
    let start = OffsetDateTime::now_utc();
    let m = ctx(MOBILE, None);
    for owner in ["RM001", "RM002", "RM003"] {
        store.create(&request(CustomerType::Ntb, "C20", "CREDIT_CARD", owner), &m).await.unwrap();
    }
    let s = Seeded { ids: HashMap::new(), start };
    let want = vec![handover("RM001", "RM002", 1), handover("RM002", "RM003", 1)];
    for (period, what) in [(around(&s), "ragged"), (whole_days(&s), "whole days"), (whole_days(&s), "folded")] {
        if what == "folded" {
            store.fold().await.unwrap();
        }
        assert_eq!(store.handovers(&period).await.unwrap().rows, want, "{what}");
    }
}

pub async fn reports_stale_pages(store: Arc<dyn Backend>) {
    let s = seed(&*store).await;
    let now = OffsetDateTime::now_utc();
    // Nothing is a day old yet.
    let fresh = StaleQuery::new(now, 1, 10).unwrap();
    assert_eq!(store.stale(&fresh).await.unwrap().records, vec![]);

    // Two days from now, every open record (E, I, M) is stale: oldest first, two to a page.
    let query = StaleQuery::new(now + Duration::days(2), 1, 2).unwrap();
    let first = store.stale(&query).await.unwrap();
    let ids =
        |page: &crate::reports::StalePage| -> Vec<RecordId> { page.records.iter().map(|r| r.id.clone()).collect() };
    assert_eq!(ids(&first), vec![s.ids[&'E'].clone(), s.ids[&'I'].clone()]);
    let e = &first.records[0];
    assert_eq!((e.record_type, e.status), (RecordType::Lead, Status::NewLead));
    assert_eq!((e.owner_id.as_str(), e.channel.as_str(), e.product.as_str()), ("RM001", MOBILE, "CREDIT_CARD"));
    assert!(e.created_at >= s.start - Duration::seconds(1) && e.created_at <= now + Duration::seconds(1));
    let i = &first.records[1];
    assert_eq!(
        (i.record_type, i.status, i.owner_id.as_str()),
        (RecordType::Opportunity, Status::NewOpportunity, "RM001")
    );
    let mut next = query.clone();
    next.after = Some(first.next.expect("a full page continues"));
    let second = store.stale(&next).await.unwrap();
    assert_eq!(ids(&second), vec![s.ids[&'M'].clone()]);
    assert_eq!(second.next, None, "the last page");

    let mut lending = StaleQuery::new(now + Duration::days(2), 1, 10).unwrap();
    lending.channel = Some(Channel::parse(LENDING).unwrap());
    assert_eq!(ids(&store.stale(&lending).await.unwrap()), vec![s.ids[&'I'].clone(), s.ids[&'M'].clone()]);
    let mut cards = StaleQuery::new(now + Duration::days(2), 1, 10).unwrap();
    cards.product = Some(Product::parse("CREDIT_CARD").unwrap());
    assert_eq!(ids(&store.stale(&cards).await.unwrap()), vec![s.ids[&'E'].clone()]);
}
