//! Shared helpers of the integration tests: start an org, get a token, call it over real HTTP.
#![allow(dead_code)]

use salesforce_fake::{FakeOrg, OrgConfig};
use serde_json::Value;

pub const V: &str = "/services/data/v62.0";

/// The throwaway test key pair (see testdata/README.md).
pub fn public_key() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/jwt_test_public.pem"))
        .expect("test public key")
}

pub fn private_key() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/jwt_test_private.pem")).expect("test private key")
}

pub fn other_private_key() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/other_private.pem")).expect("other private key")
}

pub fn config() -> OrgConfig {
    OrgConfig { jwt_public_key_pem: Some(public_key()), ..OrgConfig::default() }
}

pub struct Client {
    pub org: FakeOrg,
    pub http: reqwest::Client,
    pub token: String,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    pub fn error_code(&self) -> String {
        self.json()[0]["errorCode"].as_str().unwrap_or_default().to_string()
    }
}

pub async fn token(org: &FakeOrg, http: &reqwest::Client) -> String {
    let res = http
        .post(format!("{}/services/oauth2/token", org.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "test-client-id"),
            ("client_secret", "test-client-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

pub async fn start() -> Client {
    start_with(config()).await
}

pub async fn start_with(config: OrgConfig) -> Client {
    let org = FakeOrg::start(config).await;
    let http = reqwest::Client::new();
    let token = token(&org, &http).await;
    Client { org, http, token }
}

impl Client {
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}{}", self.org.url(), path);
        let mut req = self.http.request(method.parse().unwrap(), url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        Answer { status, headers, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }

    pub async fn query(&self, soql: &str) -> Answer {
        let url = format!("{}{V}/query", self.org.url());
        let res = self.http.get(url).query(&[("q", soql)]).bearer_auth(&self.token).send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        Answer { status, headers, text }
    }

    pub async fn create(&self, object: &str, body: Value) -> Answer {
        self.send("POST", &format!("{V}/sobjects/{object}"), Some(body)).await
    }

    pub async fn update(&self, object: &str, id: &str, body: Value) -> Answer {
        self.send("PATCH", &format!("{V}/sobjects/{object}/{id}"), Some(body)).await
    }

    pub async fn composite(&self, body: Value) -> Answer {
        self.send("POST", &format!("{V}/composite"), Some(body)).await
    }

    pub async fn soap(&self, session: &str, body_xml: &str) -> Answer {
        let envelope = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
xmlns:urn=\"urn:partner.soap.sforce.com\"><soapenv:Header><urn:SessionHeader><urn:sessionId>{session}</urn:sessionId></urn:SessionHeader>\
</soapenv:Header><soapenv:Body>{body_xml}</soapenv:Body></soapenv:Envelope>"
        );
        let res = self
            .http
            .post(format!("{}/services/Soap/u/62.0", self.org.url()))
            .header("Content-Type", "text/xml; charset=UTF-8")
            .header("SOAPAction", "\"\"")
            .body(envelope)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        Answer { status, headers, text }
    }

    pub async fn convert(&self, lead_id: &str, extra: &str) -> Answer {
        let body = format!(
            "<urn:convertLead><urn:leadConverts><urn:convertedStatus>Closed - Converted</urn:convertedStatus>\
<urn:leadId>{lead_id}</urn:leadId><urn:sendNotificationEmail>false</urn:sendNotificationEmail>{extra}</urn:leadConverts></urn:convertLead>"
        );
        self.soap(&self.token.clone(), &body).await
    }
}

/// A valid lead body owned by `owner`.
pub fn lead(owner: &str, key: &str) -> Value {
    serde_json::json!({
        "LastName": "Nguyen Van A", "Company": "Nguyen Van A", "OwnerId": owner, "Email": "a@example.com",
        "IdNumber__c": "079123456789", "Product__c": "CREDIT_CARD", "CustomerType__c": "NTB",
        "Channel__c": "MOBILE_APP", "JourneyId__c": "J-1", "OpenKey__c": key
    })
}
