//! The org's metadata: which objects and fields exist, their types, lengths, picklists and
//! permissions, the Lead statuses and Opportunity stages, and the describe JSON built from it.
//! Tests may edit a [`Schema`] (remove a field, a picklist value) before starting the org; writes,
//! queries and describes all follow it.

use serde_json::{json, Value};

/// The type of a field, as describe reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// `id`: the record id.
    Id,
    /// `string`: text with a maximum length.
    String,
    /// `textarea`.
    Textarea,
    /// `email`: text whose format is checked.
    Email,
    /// `phone`.
    Phone,
    /// `picklist`.
    Picklist,
    /// `boolean`.
    Boolean,
    /// `date`: `YYYY-MM-DD`.
    Date,
    /// `datetime`: `2026-11-27T10:00:00.000+0000`.
    DateTime,
    /// `reference`: the id of a record of one of `reference_to`.
    Reference,
    /// `double`.
    Double,
}

impl FieldType {
    /// The name describe uses.
    pub fn describe_name(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::String => "string",
            FieldType::Textarea => "textarea",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Picklist => "picklist",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Reference => "reference",
            FieldType::Double => "double",
        }
    }

    /// Whether values are text (strings with a length).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            FieldType::String | FieldType::Textarea | FieldType::Email | FieldType::Phone | FieldType::Picklist
        )
    }
}

/// One value of a picklist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PicklistValue {
    /// The API value.
    pub value: String,
    /// The label.
    pub label: String,
    /// Whether the value may be used.
    pub active: bool,
    /// Whether it is the field's default.
    pub default_value: bool,
}

/// One field of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDef {
    /// API name (case-insensitive for lookups, returned with this spelling).
    pub name: String,
    /// Label, used in error messages.
    pub label: String,
    /// Type.
    pub field_type: FieldType,
    /// Maximum length for text fields (0 otherwise).
    pub length: u32,
    /// Whether null is allowed.
    pub nillable: bool,
    /// Whether an insert may set it.
    pub createable: bool,
    /// Whether an update may set it.
    pub updateable: bool,
    /// Whether the org fills it on insert when omitted (so it is not "required").
    pub defaulted_on_create: bool,
    /// Unique (case-insensitive, Salesforce's default for unique text).
    pub unique: bool,
    /// External ID.
    pub external_id: bool,
    /// Custom field (`__c`).
    pub custom: bool,
    /// Picklist values (picklists only).
    pub picklist_values: Vec<PicklistValue>,
    /// Whether only the listed active values are accepted.
    pub restricted_picklist: bool,
    /// Target objects (references only).
    pub reference_to: Vec<String>,
    /// Relationship name for SOQL parent paths, e.g. `Owner` for `OwnerId`.
    pub relationship_name: Option<String>,
}

impl FieldDef {
    fn base(name: &str, label: &str, field_type: FieldType) -> Self {
        FieldDef {
            name: name.into(),
            label: label.into(),
            field_type,
            length: 0,
            nillable: true,
            createable: true,
            updateable: true,
            defaulted_on_create: false,
            unique: false,
            external_id: false,
            custom: name.ends_with("__c"),
            picklist_values: Vec::new(),
            restricted_picklist: false,
            reference_to: Vec::new(),
            relationship_name: None,
        }
    }

    /// A read-only field (neither createable nor updateable).
    fn read_only(mut self) -> Self {
        self.createable = false;
        self.updateable = false;
        self
    }

    /// A required field (not nillable, no default).
    fn required(mut self) -> Self {
        self.nillable = false;
        self
    }

    fn text(name: &str, label: &str, length: u32) -> Self {
        let mut f = FieldDef::base(name, label, FieldType::String);
        f.length = length;
        f
    }

    fn boolean(name: &str, label: &str) -> Self {
        let mut f = FieldDef::base(name, label, FieldType::Boolean);
        f.nillable = false;
        f.defaulted_on_create = true;
        f
    }

    fn reference(name: &str, label: &str, to: &str, relationship: &str) -> Self {
        let mut f = FieldDef::base(name, label, FieldType::Reference);
        f.length = 18;
        f.reference_to = vec![to.into()];
        f.relationship_name = Some(relationship.into());
        f
    }

    fn picklist(name: &str, label: &str, values: &[(&str, bool)]) -> Self {
        let mut f = FieldDef::base(name, label, FieldType::Picklist);
        f.length = 255;
        f.restricted_picklist = true;
        f.picklist_values = values
            .iter()
            .map(|(v, default)| PicklistValue {
                value: (*v).into(),
                label: (*v).into(),
                active: true,
                default_value: *default,
            })
            .collect();
        f
    }

    /// Whether a write must give it a value (not nillable, createable, not defaulted, not boolean).
    pub fn is_required(&self) -> bool {
        !self.nillable && self.createable && !self.defaulted_on_create && self.field_type != FieldType::Boolean
    }

    /// The default picklist value, if any.
    pub fn default_picklist_value(&self) -> Option<&str> {
        self.picklist_values.iter().find(|v| v.default_value && v.active).map(|v| v.value.as_str())
    }

    /// Removes a value from the picklist; returns whether it was there.
    pub fn remove_picklist_value(&mut self, value: &str) -> bool {
        let before = self.picklist_values.len();
        self.picklist_values.retain(|v| v.value != value);
        before != self.picklist_values.len()
    }

    /// The describe JSON of this field.
    pub fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "label": self.label,
            "type": self.field_type.describe_name(),
            "length": self.length,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": self.defaulted_on_create,
            "unique": self.unique,
            "caseSensitive": false,
            "externalId": self.external_id,
            "idLookup": self.external_id || self.field_type == FieldType::Id,
            "custom": self.custom,
            "calculated": false,
            "picklistValues": self.picklist_values.iter().map(|v| json!({
                "value": v.value, "label": v.label, "active": v.active, "defaultValue": v.default_value, "validFor": null
            })).collect::<Vec<_>>(),
            "restrictedPicklist": self.restricted_picklist,
            "referenceTo": self.reference_to,
            "relationshipName": self.relationship_name,
            "soapType": match self.field_type {
                FieldType::Id | FieldType::Reference => "tns:ID",
                FieldType::Boolean => "xsd:boolean",
                FieldType::Date => "xsd:date",
                FieldType::DateTime => "xsd:dateTime",
                FieldType::Double => "xsd:double",
                _ => "xsd:string",
            },
        })
    }
}

/// One object (sObject type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSchema {
    /// API name, e.g. `Lead`.
    pub name: String,
    /// Label.
    pub label: String,
    /// The 3-character id prefix, e.g. `00Q`.
    pub key_prefix: String,
    /// Whether records can be created and updated through the API.
    pub writable: bool,
    /// The fields.
    pub fields: Vec<FieldDef>,
}

impl ObjectSchema {
    /// The field with this name, case-insensitively.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The field with this name, case-insensitively, for editing.
    pub fn field_mut(&mut self, name: &str) -> Option<&mut FieldDef> {
        self.fields.iter_mut().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The reference field whose relationship name is `rel` (e.g. `Owner` → `OwnerId`).
    pub fn relationship(&self, rel: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.relationship_name.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(rel)))
    }

    /// Removes a field; returns whether it was there.
    pub fn remove_field(&mut self, name: &str) -> bool {
        let before = self.fields.len();
        self.fields.retain(|f| !f.name.eq_ignore_ascii_case(name));
        before != self.fields.len()
    }

    /// The describe JSON of this object (`GET /sobjects/{name}/describe`).
    pub fn describe(&self, api_version: &str) -> Value {
        let base = format!("/services/data/v{api_version}/sobjects/{}", self.name);
        json!({
            "name": self.name,
            "label": self.label,
            "keyPrefix": self.key_prefix,
            "custom": false,
            "createable": self.writable,
            "updateable": self.writable,
            "deletable": self.writable,
            "queryable": true,
            "retrieveable": true,
            "fields": self.fields.iter().map(FieldDef::describe).collect::<Vec<_>>(),
            "urls": {
                "sobject": base,
                "describe": format!("{base}/describe"),
                "rowTemplate": format!("{base}/{{ID}}"),
            },
        })
    }

    /// The short description used by describeGlobal and the sObject basic information resource.
    pub fn summary(&self, api_version: &str) -> Value {
        let base = format!("/services/data/v{api_version}/sobjects/{}", self.name);
        json!({
            "name": self.name,
            "label": self.label,
            "keyPrefix": self.key_prefix,
            "custom": false,
            "createable": self.writable,
            "updateable": self.writable,
            "queryable": true,
            "urls": { "sobject": base, "describe": format!("{base}/describe"), "rowTemplate": format!("{base}/{{ID}}") },
        })
    }
}

/// A Lead status (a row of `LeadStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeadStatusDef {
    /// API name, also the picklist value of `Lead.Status`.
    pub api_name: String,
    /// Whether a converted lead may have it.
    pub is_converted: bool,
    /// Whether new leads get it.
    pub is_default: bool,
}

/// An Opportunity stage (a row of `OpportunityStage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpportunityStageDef {
    /// API name, also the picklist value of `Opportunity.StageName`.
    pub api_name: String,
    /// Whether opportunities in it are closed.
    pub is_closed: bool,
    /// Whether opportunities in it are won.
    pub is_won: bool,
}

/// The org's metadata. `Schema::default()` is the standard org of this fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// Every object.
    pub objects: Vec<ObjectSchema>,
    /// The rows of `LeadStatus` (those whose value is missing from `Lead.Status` are not seeded).
    pub lead_statuses: Vec<LeadStatusDef>,
    /// The rows of `OpportunityStage` (same rule with `Opportunity.StageName`).
    pub opportunity_stages: Vec<OpportunityStageDef>,
}

impl Default for Schema {
    fn default() -> Self {
        Schema::standard()
    }
}

/// Custom text fields shared by Lead and Opportunity.
const JOURNEY_FIELDS: [(&str, &str); 6] = [
    ("IdNumber__c", "ID Number"),
    ("Cif__c", "CIF"),
    ("Product__c", "Product"),
    ("CustomerType__c", "Customer Type"),
    ("Channel__c", "Channel"),
    ("JourneyId__c", "Journey ID"),
];

fn system_fields() -> Vec<FieldDef> {
    let mut id = FieldDef::base("Id", "Record ID", FieldType::Id).read_only();
    id.nillable = false;
    id.length = 18;
    id.defaulted_on_create = true;
    let stamp = |name: &str, label: &str| {
        let mut f = FieldDef::base(name, label, FieldType::DateTime).read_only();
        f.nillable = false;
        f.defaulted_on_create = true;
        f
    };
    let by = |name: &str, label: &str, rel: &str| {
        let mut f = FieldDef::reference(name, label, "User", rel).read_only();
        f.nillable = false;
        f.defaulted_on_create = true;
        f
    };
    vec![
        id,
        stamp("CreatedDate", "Created Date"),
        by("CreatedById", "Created By ID", "CreatedBy"),
        stamp("LastModifiedDate", "Last Modified Date"),
        by("LastModifiedById", "Last Modified By ID", "LastModifiedBy"),
        stamp("SystemModstamp", "System Modstamp"),
    ]
}

fn owner_field() -> FieldDef {
    let mut f = FieldDef::reference("OwnerId", "Owner ID", "User", "Owner");
    f.nillable = false;
    f.defaulted_on_create = true;
    f
}

fn journey_fields() -> Vec<FieldDef> {
    let mut out: Vec<FieldDef> = JOURNEY_FIELDS.iter().map(|(n, l)| FieldDef::text(n, l, 255)).collect();
    let mut key = FieldDef::text("OpenKey__c", "Open Key", 255);
    key.unique = true;
    key.external_id = true;
    out.push(key);
    out
}

impl Schema {
    /// The standard org: Lead, Opportunity, User, LeadStatus, OpportunityStage, Account, Contact.
    pub fn standard() -> Self {
        let lead_statuses = vec![
            LeadStatusDef { api_name: "Open - Not Contacted".into(), is_converted: false, is_default: true },
            LeadStatusDef { api_name: "Working - Contacted".into(), is_converted: false, is_default: false },
            LeadStatusDef { api_name: "Closed - Converted".into(), is_converted: true, is_default: false },
            LeadStatusDef { api_name: "Closed - Not Converted".into(), is_converted: false, is_default: false },
        ];
        let opportunity_stages = vec![
            OpportunityStageDef { api_name: "Prospecting".into(), is_closed: false, is_won: false },
            OpportunityStageDef { api_name: "Qualification".into(), is_closed: false, is_won: false },
            OpportunityStageDef { api_name: "Closed Won".into(), is_closed: true, is_won: true },
            OpportunityStageDef { api_name: "Closed Lost".into(), is_closed: true, is_won: false },
        ];

        let mut lead = system_fields();
        lead.push(FieldDef::text("LastName", "Last Name", 80).required());
        lead.push(FieldDef::text("FirstName", "First Name", 40));
        lead.push(FieldDef::text("Company", "Company", 255).required());
        let statuses: Vec<(&str, bool)> = lead_statuses.iter().map(|s| (s.api_name.as_str(), s.is_default)).collect();
        let mut status = FieldDef::picklist("Status", "Lead Status", &statuses).required();
        status.defaulted_on_create = true;
        lead.push(status);
        lead.push(FieldDef::boolean("IsConverted", "Converted").read_only());
        lead.push(
            FieldDef::reference(
                "ConvertedOpportunityId",
                "Converted Opportunity ID",
                "Opportunity",
                "ConvertedOpportunity",
            )
            .read_only(),
        );
        lead.push(
            FieldDef::reference("ConvertedAccountId", "Converted Account ID", "Account", "ConvertedAccount")
                .read_only(),
        );
        lead.push(
            FieldDef::reference("ConvertedContactId", "Converted Contact ID", "Contact", "ConvertedContact")
                .read_only(),
        );
        lead.push(FieldDef::base("ConvertedDate", "Converted Date", FieldType::Date).read_only());
        lead.push(owner_field());
        let mut email = FieldDef::base("Email", "Email", FieldType::Email);
        email.length = 80;
        lead.push(email);
        let mut phone = FieldDef::base("Phone", "Phone", FieldType::Phone);
        phone.length = 40;
        lead.push(phone);
        lead.extend(journey_fields());

        let mut opp = system_fields();
        opp.push(FieldDef::text("Name", "Name", 120).required());
        opp.push(FieldDef::base("CloseDate", "Close Date", FieldType::Date).required());
        // StageName: no default is applied on insert; Prospecting is the default stage of conversion.
        let stages: Vec<(&str, bool)> =
            opportunity_stages.iter().enumerate().map(|(i, s)| (s.api_name.as_str(), i == 0)).collect();
        opp.push(FieldDef::picklist("StageName", "Stage", &stages).required());
        opp.push(FieldDef::boolean("IsClosed", "Closed").read_only());
        opp.push(FieldDef::boolean("IsWon", "Won").read_only());
        opp.push(owner_field());
        opp.push(FieldDef::reference("AccountId", "Account ID", "Account", "Account"));
        opp.extend(journey_fields());

        let mut user = system_fields();
        user.push(FieldDef::text("Username", "Username", 80).required());
        user.push(FieldDef::text("FederationIdentifier", "SAML Federation ID", 512));
        user.push(FieldDef::boolean("IsActive", "Active"));
        user.push(FieldDef::text("Name", "Full Name", 121).read_only());

        let mut lead_status = system_fields();
        lead_status.push(FieldDef::text("ApiName", "Api Name", 255).read_only());
        lead_status.push(FieldDef::text("MasterLabel", "Master Label", 255).read_only());
        lead_status.push(FieldDef::boolean("IsConverted", "Is Converted").read_only());
        lead_status.push(FieldDef::boolean("IsDefault", "Is Default").read_only());

        let mut stage = system_fields();
        stage.push(FieldDef::text("ApiName", "Api Name", 255).read_only());
        stage.push(FieldDef::text("MasterLabel", "Master Label", 255).read_only());
        stage.push(FieldDef::boolean("IsClosed", "Closed").read_only());
        stage.push(FieldDef::boolean("IsWon", "Won").read_only());
        stage.push(FieldDef::boolean("IsActive", "Active").read_only());

        let mut account = system_fields();
        account.push(FieldDef::text("Name", "Account Name", 255).required());
        account.push(owner_field());

        let mut contact = system_fields();
        contact.push(FieldDef::text("LastName", "Last Name", 80).required());
        contact.push(FieldDef::text("FirstName", "First Name", 40));
        contact.push(FieldDef::reference("AccountId", "Account ID", "Account", "Account"));
        let mut cemail = FieldDef::base("Email", "Email", FieldType::Email);
        cemail.length = 80;
        contact.push(cemail);
        let mut cphone = FieldDef::base("Phone", "Business Phone", FieldType::Phone);
        cphone.length = 40;
        contact.push(cphone);
        contact.push(owner_field());

        let obj = |name: &str, label: &str, prefix: &str, writable: bool, fields: Vec<FieldDef>| ObjectSchema {
            name: name.into(),
            label: label.into(),
            key_prefix: prefix.into(),
            writable,
            fields,
        };
        Schema {
            objects: vec![
                obj("Lead", "Lead", "00Q", true, lead),
                obj("Opportunity", "Opportunity", "006", true, opp),
                obj("User", "User", "005", false, user),
                obj("Account", "Account", "001", true, account),
                obj("Contact", "Contact", "003", true, contact),
                obj("LeadStatus", "Lead Status Value", "01J", false, lead_status),
                obj("OpportunityStage", "Opportunity Stage", "01J", false, stage),
            ],
            lead_statuses,
            opportunity_stages,
        }
    }

    /// The object with this name, case-insensitively.
    pub fn object(&self, name: &str) -> Option<&ObjectSchema> {
        self.objects.iter().find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// The object with this name, case-insensitively, for editing.
    pub fn object_mut(&mut self, name: &str) -> Option<&mut ObjectSchema> {
        self.objects.iter_mut().find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// Removes `field` from `object`; returns whether it was there.
    pub fn remove_field(&mut self, object: &str, field: &str) -> bool {
        self.object_mut(object).is_some_and(|o| o.remove_field(field))
    }

    /// Removes `value` from the picklist `object.field`; returns whether it was there.
    pub fn remove_picklist_value(&mut self, object: &str, field: &str, value: &str) -> bool {
        self.object_mut(object).and_then(|o| o.field_mut(field)).is_some_and(|f| f.remove_picklist_value(value))
    }
}
