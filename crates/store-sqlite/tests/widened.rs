//! With matching widened to `idNumber` alone, products share one key.

use std::sync::Arc;

use lifecycle::{CreateResult, CustomerType, Matching};
use store::contract::{ctx, request};
use store::Store;
use store_sqlite::{SqliteConfig, SqliteStore};

#[tokio::test]
async fn widened_matching_ignores_the_product() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("crm.db"));
    config.matching = Matching::IdNumber;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(config).unwrap());
    let card = store.create(&request(CustomerType::Ntb, "W1", "CARD", "RM001"), &ctx("a")).await.unwrap();
    let loan = store.create(&request(CustomerType::Ntb, "W1", "LOAN", "RM001"), &ctx("b")).await.unwrap();
    assert_eq!((loan.result, &loan.id), (CreateResult::Existing, &card.id));
    let other = store.create(&request(CustomerType::Ntb, "W1", "LOAN", "RM002"), &ctx("c")).await.unwrap();
    assert_eq!(other.result, CreateResult::Replaced);
    assert_eq!(other.closed_record_ids, vec![card.id]);
}
