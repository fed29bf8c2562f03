//! SOAP convertLead.
mod support;

use serde_json::json;
use support::*;

fn between<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

#[tokio::test]
async fn convert_lead_creates_the_opportunity_and_flags_the_lead() {
    let c = start().await;
    let rm = c.org.add_user("RM001", true);
    let lead_id = c.org.insert("Lead", json!({"LastName": "Nguyen", "Company": "Nguyen Co", "OwnerId": rm, "IdNumber__c": "079", "Product__c": "CARD"}));
    let a = c.convert(&lead_id, "<urn:doNotCreateOpportunity>false</urn:doNotCreateOpportunity><urn:opportunityName>Card for Nguyen</urn:opportunityName>").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains("<convertLeadResponse><result>"), "{}", a.text);
    assert_eq!(between(&a.text, "success"), Some("true"));
    let opp = between(&a.text, "opportunityId").unwrap().to_string();
    let account = between(&a.text, "accountId").unwrap().to_string();
    let contact = between(&a.text, "contactId").unwrap().to_string();
    assert_eq!(between(&a.text, "leadId"), Some(lead_id.as_str()));
    let o = c.org.record("Opportunity", &opp).unwrap();
    assert_eq!(o["Name"], "Card for Nguyen");
    assert_eq!(o["StageName"], "Prospecting");
    assert_eq!(o["OwnerId"], rm.as_str());
    assert_eq!(o["AccountId"], account.as_str());
    assert_eq!(o["IsClosed"], false);
    assert_eq!(o["IdNumber__c"], serde_json::Value::Null, "lead custom fields are not mapped by default");
    assert_eq!(o["CloseDate"].as_str().unwrap().len(), 10);
    assert_eq!(c.org.record("Account", &account).unwrap()["Name"], "Nguyen Co");
    assert_eq!(c.org.record("Contact", &contact).unwrap()["AccountId"], account.as_str());
    let l = c.org.record("Lead", &lead_id).unwrap();
    assert_eq!(l["IsConverted"], true);
    assert_eq!(l["Status"], "Closed - Converted");
    assert_eq!(l["ConvertedOpportunityId"], opp.as_str());
    assert_eq!(l["ConvertedAccountId"], account.as_str());
    assert_eq!(l["ConvertedContactId"], contact.as_str());
    assert!(l["ConvertedDate"].is_string());
    // then it refuses updates and a second conversion
    let u = c.update("Lead", &lead_id, json!({"FirstName": "x"})).await;
    assert_eq!(u.error_code(), "CANNOT_UPDATE_CONVERTED_LEAD");
    let again = c.convert(&lead_id, "").await;
    assert_eq!(again.status, 200);
    assert_eq!(between(&again.text, "success"), Some("false"));
    assert_eq!(between(&again.text, "statusCode"), Some("CANNOT_UPDATE_CONVERTED_LEAD"));
    assert!(again.text.contains("<opportunityId xsi:nil=\"true\"/>"));
    assert_eq!(c.org.records("Opportunity").len(), 1);
    let calls = c.org.calls();
    assert_eq!(calls[0].kind, salesforce_fake::CallKind::Soap);
    assert_eq!(calls[0].soap_action.as_deref(), Some("\"\""));
}

#[tokio::test]
async fn do_not_create_opportunity_and_name_default() {
    let c = start().await;
    let l1 = c.org.insert("Lead", json!({"LastName": "A", "Company": "A Co"}));
    let a = c.convert(&l1, "<urn:doNotCreateOpportunity>true</urn:doNotCreateOpportunity>").await;
    assert_eq!(between(&a.text, "success"), Some("true"), "{}", a.text);
    assert!(a.text.contains("<opportunityId xsi:nil=\"true\"/>"));
    assert!(c.org.records("Opportunity").is_empty());
    let l2 = c.org.insert("Lead", json!({"LastName": "B", "Company": "B Co"}));
    let a = c.convert(&l2, "").await;
    let opp = between(&a.text, "opportunityId").unwrap().to_string();
    assert_eq!(c.org.record("Opportunity", &opp).unwrap()["Name"], "B Co");
}

#[tokio::test]
async fn conversion_errors_leave_nothing_behind() {
    let c = start().await;
    let l = c.org.insert("Lead", json!({"LastName": "A", "Company": "A Co"}));
    let body = format!("<urn:convertLead><urn:leadConverts><urn:convertedStatus>Working - Contacted</urn:convertedStatus><urn:leadId>{l}</urn:leadId></urn:leadConverts></urn:convertLead>");
    let a = c.soap(&c.token.clone(), &body).await;
    assert_eq!(between(&a.text, "success"), Some("false"), "{}", a.text);
    assert_eq!(between(&a.text, "statusCode"), Some("INVALID_STATUS"));
    c.org.validation_rule("Opportunity", "StageName", "Prospecting", "No prospecting");
    let a = c.convert(&l, "").await;
    assert_eq!(between(&a.text, "statusCode"), Some("FIELD_CUSTOM_VALIDATION_EXCEPTION"));
    assert!(
        c.org.records("Account").is_empty()
            && c.org.records("Contact").is_empty()
            && c.org.records("Opportunity").is_empty()
    );
    assert_eq!(c.org.record("Lead", &l).unwrap()["IsConverted"], false);
    let a = c.convert("00QWt0000000zzz", "").await;
    assert_eq!(between(&a.text, "success"), Some("false"));
    let a =
        c.soap(&c.token.clone(), "<urn:query><urn:queryString>SELECT Id FROM Lead</urn:queryString></urn:query>").await;
    assert_eq!(a.status, 500);
    assert!(a.text.contains("soapenv:Fault"));
    let raw = c.http.post(format!("{}/services/Soap/u/62.0", c.org.url())).body("<not xml").send().await.unwrap();
    assert_eq!(raw.status(), 500);
}
