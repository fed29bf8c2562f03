//! Lead conversion over the SOAP API (partner WSDL): Salesforce has no REST resource that converts a lead.
//! The envelope carries the OAuth access token as the `SessionHeader`'s session id.

use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::error::OrgError;

/// What `convertLead` is asked to do for one lead.
pub(crate) struct Convert<'a> {
    pub lead_id: &'a str,
    pub converted_status: &'a str,
    /// `None`: convert without an opportunity (`doNotCreateOpportunity`).
    pub opportunity_name: Option<&'a str>,
}

pub(crate) fn convert_envelope(c: &Convert<'_>, session_id: &str) -> String {
    let opportunity = match c.opportunity_name {
        Some(name) => format!(
            "<urn:doNotCreateOpportunity>false</urn:doNotCreateOpportunity><urn:opportunityName>{}</urn:opportunityName>",
            escape(name)
        ),
        None => "<urn:doNotCreateOpportunity>true</urn:doNotCreateOpportunity>".to_owned(),
    };
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:partner.soap.sforce.com">"#,
            "<soapenv:Header><urn:SessionHeader><urn:sessionId>{session}</urn:sessionId></urn:SessionHeader></soapenv:Header>",
            "<soapenv:Body><urn:convertLead><urn:leadConverts>",
            "<urn:convertedStatus>{status}</urn:convertedStatus>",
            "{opportunity}",
            "<urn:leadId>{lead}</urn:leadId>",
            "<urn:sendNotificationEmail>false</urn:sendNotificationEmail>",
            "</urn:leadConverts></urn:convertLead></soapenv:Body></soapenv:Envelope>"
        ),
        session = escape(session_id),
        status = escape(c.converted_status),
        opportunity = opportunity,
        lead = escape(c.lead_id),
    )
}

/// The `LeadConvertResult` of one lead.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Converted {
    pub success: bool,
    pub opportunity_id: Option<String>,
    pub errors: Vec<OrgError>,
}

/// Reads the first `result` of a `convertLeadResponse`. `None` when the envelope holds no result.
pub(crate) fn parse_converted(xml: &str) -> Option<Converted> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut out = Converted::default();
    let mut seen_result = false;
    let mut current_error: Option<OrgError> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if name == "result" {
                    if seen_result {
                        break; // one lead per call
                    }
                    seen_result = true;
                }
                if name == "errors" && path.last().is_some_and(|p| p == "result") {
                    current_error = Some(OrgError { message: String::new(), code: String::new(), fields: vec![] });
                }
                path.push(name);
            }
            Ok(Event::End(_)) => {
                let closing_errors = path.pop().as_deref() == Some("errors");
                match current_error.take() {
                    Some(e) if closing_errors => out.errors.push(e),
                    kept => current_error = kept,
                }
            }
            Ok(Event::Text(t)) => {
                let text = t.unescape().map(|c| c.into_owned()).unwrap_or_default();
                let leaf = path.last().map(String::as_str);
                let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
                match (parent, leaf) {
                    (Some("result"), Some("success")) => out.success = text == "true",
                    (Some("result"), Some("opportunityId")) if !text.is_empty() => out.opportunity_id = Some(text),
                    (Some("errors"), Some("statusCode")) => {
                        if let Some(e) = current_error.as_mut() {
                            e.code = text;
                        }
                    }
                    (Some("errors"), Some("message")) => {
                        if let Some(e) = current_error.as_mut() {
                            e.message = text;
                        }
                    }
                    (Some("errors"), Some("fields")) => {
                        if let Some(e) = current_error.as_mut() {
                            e.fields.push(text);
                        }
                    }
                    _ => {}
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    seen_result.then_some(out)
}

/// The `faultcode` of a SOAP fault (`sf:INVALID_SESSION_ID`), if the text is one.
pub(crate) fn fault_code(xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut in_code = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => in_code = e.local_name().as_ref() == b"faultcode",
            Ok(Event::Text(t)) if in_code => return t.unescape().ok().map(|c| c.into_owned()),
            Ok(Event::End(_)) => in_code = false,
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_escapes_and_carries_the_session() {
        let c = Convert {
            lead_id: "00Q000000000001AAA",
            converted_status: "Closed - Converted",
            opportunity_name: Some("A & B <card>"),
        };
        let xml = convert_envelope(&c, "tok<en>");
        assert!(xml.contains("<urn:sessionId>tok&lt;en&gt;</urn:sessionId>"));
        assert!(xml.contains("<urn:opportunityName>A &amp; B &lt;card&gt;</urn:opportunityName>"));
        assert!(xml.contains("<urn:doNotCreateOpportunity>false</urn:doNotCreateOpportunity>"));
        let none = convert_envelope(&Convert { opportunity_name: None, ..c }, "t");
        assert!(none.contains("<urn:doNotCreateOpportunity>true</urn:doNotCreateOpportunity>"));
        assert!(!none.contains("opportunityName"));
    }

    #[test]
    fn results_and_faults_are_read() {
        let ok = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com"><soapenv:Body><convertLeadResponse><result><accountId>001A</accountId><contactId>003A</contactId><leadId>00QA</leadId><opportunityId>006A</opportunityId><success>true</success></result></convertLeadResponse></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(
            parse_converted(ok),
            Some(Converted { success: true, opportunity_id: Some("006A".into()), errors: vec![] })
        );
        let failed = r#"<Envelope><Body><convertLeadResponse><result><errors><fields>Status</fields><message>bad</message><statusCode>INVALID_STATUS</statusCode></errors><leadId>00QA</leadId><opportunityId xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/><success>false</success></result></convertLeadResponse></Body></Envelope>"#;
        let c = parse_converted(failed).unwrap();
        assert!(!c.success && c.opportunity_id.is_none());
        assert_eq!(
            c.errors,
            vec![OrgError { message: "bad".into(), code: "INVALID_STATUS".into(), fields: vec!["Status".into()] }]
        );
        let fault = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>sf:INVALID_SESSION_ID</faultcode><faultstring>expired</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(fault_code(fault).as_deref(), Some("sf:INVALID_SESSION_ID"));
        assert_eq!(parse_converted(fault), None);
        assert_eq!(parse_converted("not xml at all <"), None);
    }
}
