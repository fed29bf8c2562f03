//! The decision tables of SPEC §2 and the readings of §6, row by row, plus a property test of the
//! invariant of §1 over random sequences of operations.

use lifecycle::*;
use proptest::prelude::*;

use CustomerType::{Etb, Ntb};
use RecordType::{Lead, Opportunity as Opp};

fn rec(id: &str, record_type: RecordType, owner: &str) -> OpenRecord {
    OpenRecord { id: id.into(), record_type, owner_id: OwnerId::parse(owner).unwrap() }
}

fn snap(open: &[OpenRecord]) -> Snapshot {
    Snapshot { open: open.to_vec() }
}

fn existing(record_type: RecordType, id: &str) -> CreatePlan {
    CreatePlan::Existing { record_type, id: id.into() }
}

fn create(record_type: RecordType, close: &[&str]) -> CreatePlan {
    CreatePlan::Create { record_type, close: close.iter().map(|s| s.to_string()).collect() }
}

#[test]
fn create_decision_table() {
    let rm1 = "RM001";
    // (row, customer type, snapshot newest first, expected plan, expected result)
    let rows: Vec<(&str, CustomerType, Vec<OpenRecord>, CreatePlan, CreateResult)> = vec![
        ("E1", Etb, vec![rec("o1", Opp, rm1)], existing(Opp, "o1"), CreateResult::Existing),
        ("E2", Etb, vec![rec("o1", Opp, "RM002")], create(Opp, &["o1"]), CreateResult::Replaced),
        ("E3", Etb, vec![], create(Opp, &[]), CreateResult::Created),
        ("E3, leads ignored", Etb, vec![rec("l1", Lead, rm1)], create(Opp, &[]), CreateResult::Created),
        (
            "E2, leads untouched",
            Etb,
            vec![rec("l1", Lead, "RM002"), rec("o1", Opp, "RM002")],
            create(Opp, &["o1"]),
            CreateResult::Replaced,
        ),
        ("N1", Ntb, vec![rec("o1", Opp, rm1)], existing(Opp, "o1"), CreateResult::Existing),
        (
            "N1 over a same-owner lead",
            Ntb,
            vec![rec("l1", Lead, rm1), rec("o1", Opp, rm1)],
            existing(Opp, "o1"),
            CreateResult::Existing,
        ),
        ("N2", Ntb, vec![rec("o1", Opp, "RM002")], create(Opp, &["o1"]), CreateResult::Replaced),
        (
            "N2, leads untouched",
            Ntb,
            vec![rec("o1", Opp, "RM002"), rec("l1", Lead, rm1)],
            create(Opp, &["o1"]),
            CreateResult::Replaced,
        ),
        ("N3", Ntb, vec![rec("l1", Lead, rm1)], existing(Lead, "l1"), CreateResult::Existing),
        ("N4", Ntb, vec![rec("l1", Lead, "RM002")], create(Lead, &["l1"]), CreateResult::Replaced),
        ("N5", Ntb, vec![], create(Lead, &[]), CreateResult::Created),
    ];
    for (row, customer_type, open, expected, result) in rows {
        let plan = plan_create(customer_type, &OwnerId::parse(rm1).unwrap(), &snap(&open));
        assert_eq!(plan, expected, "row {row}");
        assert_eq!(plan.result(), result, "row {row}");
    }
}

#[test]
fn several_open_records_reading_3() {
    let me = OwnerId::parse("RM001").unwrap();
    // Same owner among several: the newest such is returned, nothing changes.
    let open = snap(&[rec("o3", Opp, "RM009"), rec("o2", Opp, "RM001"), rec("o1", Opp, "RM001")]);
    assert_eq!(plan_create(Etb, &me, &open), existing(Opp, "o2"));
    assert_eq!(plan_create(Ntb, &me, &open), existing(Opp, "o2"));
    // None with the same owner: all are closed, one is created.
    let open = snap(&[rec("o2", Opp, "RM002"), rec("o1", Opp, "RM003")]);
    assert_eq!(plan_create(Etb, &me, &open), create(Opp, &["o2", "o1"]));
    let open = snap(&[rec("l2", Lead, "RM002"), rec("l1", Lead, "RM003")]);
    assert_eq!(plan_create(Ntb, &me, &open), create(Lead, &["l2", "l1"]));
    let open = snap(&[rec("l2", Lead, "RM002"), rec("l1", Lead, "RM001")]);
    assert_eq!(plan_create(Ntb, &me, &open), existing(Lead, "l1"));
}

fn target(record_type: RecordType, status: Status) -> Target {
    Target { id: "x".into(), record_type, status, converted_opportunity_id: None }
}

#[test]
fn close_won_transitions() {
    assert_eq!(plan_close_won(&target(Opp, Status::NewOpportunity), true), CloseWonPlan::Win { convert: false });
    assert_eq!(plan_close_won(&target(Lead, Status::NewLead), true), CloseWonPlan::Win { convert: true });
    assert_eq!(plan_close_won(&target(Lead, Status::NewLead), false), CloseWonPlan::Win { convert: false });
    // Idempotent repeat: no second conversion.
    assert_eq!(plan_close_won(&target(Lead, Status::CloseWon), true), CloseWonPlan::AlreadyWon);
    assert_eq!(plan_close_won(&target(Opp, Status::CloseWon), true), CloseWonPlan::AlreadyWon);
    assert_eq!(plan_close_won(&target(Lead, Status::CloseLost), true), CloseWonPlan::Refuse);
    assert_eq!(plan_close_won(&target(Opp, Status::CloseLost), false), CloseWonPlan::Refuse);
}

#[test]
fn close_lost_transitions() {
    assert_eq!(plan_close_lost(&target(Opp, Status::NewOpportunity)), CloseLostPlan::Lose);
    assert_eq!(plan_close_lost(&target(Lead, Status::NewLead)), CloseLostPlan::Lose);
    assert_eq!(plan_close_lost(&target(Lead, Status::CloseLost)), CloseLostPlan::AlreadyLost);
    assert_eq!(plan_close_lost(&target(Opp, Status::CloseLost)), CloseLostPlan::AlreadyLost);
    assert_eq!(plan_close_lost(&target(Lead, Status::CloseWon)), CloseLostPlan::Refuse);
    assert_eq!(plan_close_lost(&target(Opp, Status::CloseWon)), CloseLostPlan::Refuse);
}

#[test]
fn create_results_wire_names() {
    let names = [CreateResult::Created, CreateResult::Replaced, CreateResult::Existing].map(CreateResult::as_str);
    assert_eq!(names, ["CREATED", "REPLACED", "EXISTING"]);
}

#[test]
fn status_wire_names_and_openness() {
    let names: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(names, ["New Lead", "New Opportunity", "Close Won", "Close Lost"]);
    for s in Status::ALL {
        assert_eq!(Status::parse(s.as_str()), Ok(s));
    }
    assert!(Status::parse("Closed Won").is_err());
    // Reading 2: a Close Won lead is not open.
    assert!(!Status::CloseWon.is_open());
    assert!(Status::NewLead.is_open() && Status::NewOpportunity.is_open());
}

#[test]
fn product_scoping_reading_4() {
    let id = IdNumber::parse("079123456789").unwrap();
    let card = Product::parse("CREDIT_CARD").unwrap();
    let loan = Product::parse("PERSONAL_LOAN").unwrap();
    assert_ne!(Matching::IdNumberAndProduct.key(&id, &card), Matching::IdNumberAndProduct.key(&id, &loan));
}

// ---- property test: a tiny in-memory CRM that executes plans exactly as an adapter must ----

#[derive(Debug, Clone)]
struct Rec {
    id: String,
    key: u8,
    record_type: RecordType,
    owner: String,
    status: Status,
    converted: Option<String>,
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        key: u8,
        etb: bool,
        owner: u8,
    },
    CloseWon {
        pick: usize,
        convert: bool,
    },
    CloseLost {
        pick: usize,
    },
    /// A record written outside the service, which may break the invariant (reading 3).
    Outside {
        key: u8,
        lead: bool,
        owner: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, any::<bool>(), 0..3u8).prop_map(|(key, etb, owner)| Op::Create { key, etb, owner }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, convert)| Op::CloseWon { pick, convert }),
        2 => any::<usize>().prop_map(|pick| Op::CloseLost { pick }),
        1 => (0..3u8, any::<bool>(), 0..3u8).prop_map(|(key, lead, owner)| Op::Outside { key, lead, owner }),
    ]
}

fn open_count(db: &[Rec], key: u8, record_type: RecordType) -> usize {
    db.iter().filter(|r| r.key == key && r.record_type == record_type && r.status.is_open()).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn plans_never_leave_two_open_records_for_a_key(ops in proptest::collection::vec(op(), 1..60)) {
        let mut db: Vec<Rec> = Vec::new();
        let mut healthy = [true; 3]; // keys where the invariant held before outside writes broke it
        for (n, op) in ops.into_iter().enumerate() {
            let new_id = format!("r{n}");
            match op {
                Op::Create { key, etb, owner } => {
                    let owner_id = OwnerId::parse(&format!("RM{owner}")).unwrap();
                    let open = db.iter().rev() // newest first
                        .filter(|r| r.key == key && r.status.is_open())
                        .map(|r| OpenRecord { id: r.id.clone(), record_type: r.record_type, owner_id: OwnerId::parse(&r.owner).unwrap() })
                        .collect();
                    let customer_type = if etb { CustomerType::Etb } else { CustomerType::Ntb };
                    match plan_create(customer_type, &owner_id, &Snapshot { open }) {
                        CreatePlan::Existing { id, .. } => {
                            let r = db.iter().find(|r| r.id == id).unwrap();
                            prop_assert!(r.status.is_open());
                            prop_assert_eq!(&r.owner, owner_id.as_str());
                            if etb { prop_assert_eq!(r.record_type, RecordType::Opportunity); }
                        }
                        CreatePlan::Create { record_type, close } => {
                            if etb { prop_assert_eq!(record_type, RecordType::Opportunity); }
                            for id in &close {
                                let r = db.iter_mut().find(|r| &r.id == id).unwrap();
                                prop_assert!(r.status.is_open());
                                prop_assert_eq!(r.record_type, record_type);
                                r.status = Status::CloseLost;
                            }
                            db.push(Rec { id: new_id, key, record_type, owner: owner_id.as_str().into(), status: record_type.open_status(), converted: None });
                            // After a create, every open record of the created type is healed.
                            prop_assert_eq!(open_count(&db, key, record_type), 1);
                        }
                    }
                }
                Op::CloseWon { pick, convert } if !db.is_empty() => {
                    let i = pick % db.len();
                    let r = &db[i];
                    let t = Target { id: r.id.clone(), record_type: r.record_type, status: r.status, converted_opportunity_id: r.converted.clone() };
                    if let CloseWonPlan::Win { convert } = plan_close_won(&t, convert) {
                        let mut won = db[i].clone();
                        db[i].status = Status::CloseWon;
                        if convert {
                            db[i].converted = Some(new_id.clone());
                            won.id = new_id;
                            won.record_type = RecordType::Opportunity;
                            won.status = Status::CloseWon;
                            db.push(won);
                        }
                    }
                }
                Op::CloseLost { pick } if !db.is_empty() => {
                    let i = pick % db.len();
                    let r = &db[i];
                    let t = Target { id: r.id.clone(), record_type: r.record_type, status: r.status, converted_opportunity_id: None };
                    if plan_close_lost(&t) == CloseLostPlan::Lose {
                        db[i].status = Status::CloseLost;
                    }
                }
                Op::Outside { key, lead, owner } => {
                    let record_type = if lead { RecordType::Lead } else { RecordType::Opportunity };
                    db.push(Rec { id: new_id, key, record_type, owner: format!("RM{owner}"), status: record_type.open_status(), converted: None });
                    healthy[key as usize] = false;
                }
                _ => {}
            }
            for key in 0..3u8 {
                if healthy[key as usize] {
                    prop_assert!(open_count(&db, key, RecordType::Lead) <= 1, "two open leads for key {}", key);
                    prop_assert!(open_count(&db, key, RecordType::Opportunity) <= 1, "two open opportunities for key {}", key);
                }
            }
        }
    }
}
