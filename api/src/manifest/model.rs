//! The checked manifest model: what [`super::parse`] produces.
use std::collections::BTreeMap;
use std::time::Duration;

use crate::template::Template;

/// A validated deployment manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Package reference values by package name.
    pub packages: BTreeMap<String, crate::Package>,
    /// Marbles by marble type.
    pub marbles: BTreeMap<String, Marble>,
    /// Infrastructure descriptions: parsed and stored, not enforced.
    pub infrastructures: BTreeMap<String, Infrastructure>,
    /// Secret definitions by name.
    pub secrets: BTreeMap<String, SecretSpec>,
    /// Users of the client API by name.
    pub users: BTreeMap<String, User>,
    /// RBAC roles by name.
    pub roles: BTreeMap<String, Role>,
    /// Recovery keys by name: PEM `PUBLIC KEY` (PKIX, RSA).
    pub recovery_keys: BTreeMap<String, String>,
    /// MarbleRun Transparent-TLS tags (validated for compatibility).
    pub tls: BTreeMap<String, TlsTag>,
    /// Deployment-wide settings.
    pub config: Config,
}

/// `Marbles.<type>`: one kind of service.
#[derive(Debug, Clone, PartialEq)]
pub struct Marble {
    /// Name of the package (a key of `Packages`) instances must match.
    pub package: String,
    /// Lifetime activation budget; 0 = unlimited.
    pub max_activations: u64,
    /// Files, environment and argv given to the marble.
    pub parameters: MarbleParameters,
    /// Names of `TLS` tags this marble uses.
    pub tls: Vec<String>,
    /// Derive private secrets without the marble type (MarbleRun pre-1.6 behaviour).
    pub disable_secret_binding: bool,
    /// Leaf certificate lifetime (Quarry `CertValidFor`, default 24 h).
    pub cert_valid_for: Duration,
    /// DNS names / IPs the marble's leaf may carry (Quarry `DNSNames`).
    pub dns_names: Vec<String>,
    /// The sidecar proxy configuration (Quarry `Mesh`).
    pub mesh: Option<super::Mesh>,
}

/// Default leaf lifetime when a marble sets no `CertValidFor`.
pub const DEFAULT_CERT_VALID_FOR: Duration = Duration::from_secs(24 * 3600);

/// Longest `CertValidFor` accepted.
pub const MAX_CERT_VALID_FOR: Duration = Duration::from_secs(366 * 24 * 3600);

/// `Marbles.<type>.Parameters`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MarbleParameters {
    /// Path → content.
    pub files: BTreeMap<String, FileValue>,
    /// Name → value.
    pub env: BTreeMap<String, FileValue>,
    /// argv (argv\[0\] included); not templated.
    pub argv: Vec<String>,
}

/// A File or Env value.
#[derive(Debug, Clone, PartialEq)]
pub struct FileValue {
    /// The data, decoded per its `Encoding`.
    pub data: Vec<u8>,
    /// True when `data` is used as is.
    pub no_templates: bool,
    /// The parsed template; `Some` iff `!no_templates`.
    pub template: Option<Template>,
}

/// `Infrastructures.<name>` (MarbleRun; not enforced by Quarry).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Infrastructure {
    /// `CPUSVN` bytes.
    pub cpusvn: Option<Vec<u8>>,
    /// `QESVN`.
    pub qesvn: Option<u16>,
    /// `PCESVN`.
    pub pcesvn: Option<u16>,
    /// `RootCA` bytes.
    pub root_ca: Option<Vec<u8>>,
}

/// The type of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// `symmetric-key`.
    SymmetricKey,
    /// `cert-rsa`.
    CertRsa,
    /// `cert-ecdsa`.
    CertEcdsa,
    /// `cert-ed25519`.
    CertEd25519,
    /// `plain`: arbitrary user-uploaded bytes.
    Plain,
}

impl SecretKind {
    /// All kinds.
    pub const ALL: [SecretKind; 5] = [
        SecretKind::SymmetricKey,
        SecretKind::CertRsa,
        SecretKind::CertEcdsa,
        SecretKind::CertEd25519,
        SecretKind::Plain,
    ];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::SymmetricKey => "symmetric-key",
            SecretKind::CertRsa => "cert-rsa",
            SecretKind::CertEcdsa => "cert-ecdsa",
            SecretKind::CertEd25519 => "cert-ed25519",
            SecretKind::Plain => "plain",
        }
    }

    /// Parse the manifest spelling (case-sensitive, as MarbleRun).
    pub fn parse(text: &str) -> Option<SecretKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// True for the certificate kinds.
    pub fn is_cert(self) -> bool {
        matches!(
            self,
            SecretKind::CertRsa | SecretKind::CertEcdsa | SecretKind::CertEd25519
        )
    }
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Secrets.<name>`: a secret definition.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The type.
    pub kind: SecretKind,
    /// Key size in bits (0 = default for the type).
    pub size: u32,
    /// One value for all marbles (else one per marble instance).
    pub shared: bool,
    /// Uploaded by a user (`POST /secrets`) instead of generated.
    pub user_defined: bool,
    /// Certificate template for the cert kinds.
    pub cert: Option<CertTemplate>,
    /// Certificate lifetime in days (`ValidFor`), cert kinds only.
    pub valid_for_days: Option<u32>,
    /// Initial private value of a user-defined secret (`Private`).
    pub initial_private: Option<Vec<u8>>,
    /// Initial public value of a user-defined secret (`Public`).
    pub initial_public: Option<Vec<u8>>,
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact =
            |v: &Option<Vec<u8>>| v.as_ref().map(|b| format!("[REDACTED; {} bytes]", b.len()));
        f.debug_struct("SecretSpec")
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("shared", &self.shared)
            .field("user_defined", &self.user_defined)
            .field("cert", &self.cert)
            .field("valid_for_days", &self.valid_for_days)
            .field("initial_private", &redact(&self.initial_private))
            .field("initial_public", &redact(&self.initial_public))
            .finish()
    }
}

/// The supported subset of Go's `x509.Certificate` used as a certificate template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertTemplate {
    /// `Subject.CommonName`.
    pub common_name: Option<String>,
    /// `Subject.Organization`.
    pub organization: Vec<String>,
    /// `Subject.OrganizationalUnit`.
    pub organizational_unit: Vec<String>,
    /// `Subject.Country`.
    pub country: Vec<String>,
    /// `Subject.Locality`.
    pub locality: Vec<String>,
    /// `Subject.Province`.
    pub province: Vec<String>,
    /// `DNSNames`.
    pub dns_names: Vec<String>,
    /// `IPAddresses`.
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// `EmailAddresses`.
    pub email_addresses: Vec<String>,
    /// `URIs`.
    pub uris: Vec<String>,
    /// `NotAfter` (RFC 3339).
    pub not_after: Option<time::OffsetDateTime>,
    /// `KeyUsage` (Go bitmask: DigitalSignature 1 … DecipherOnly 256).
    pub key_usage: Option<u32>,
    /// `ExtKeyUsage` (Go enum ints: Any 0, ServerAuth 1, ClientAuth 2, …).
    pub ext_key_usage: Vec<u32>,
    /// `IsCA`.
    pub is_ca: bool,
    /// `MaxPathLen` (`Some(0)` also when `MaxPathLenZero`; Go's -1 and unset are `None`).
    pub max_path_len: Option<i64>,
}

/// `Users.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// PEM X.509 certificate; clients authenticate with exactly this certificate.
    pub certificate_pem: String,
    /// Role names (keys of `Roles`).
    pub roles: Vec<String>,
}

/// What a role grants access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// Packages (action `UpdateSecurityVersion`).
    Packages,
    /// Secrets (actions `ReadSecret`, `WriteSecret`).
    Secrets,
    /// The manifest (action `UpdateManifest`).
    Manifest,
    /// Marble types (action `RevokeMarble`: revoke instances and certificates of these types).
    Marbles,
}

impl ResourceType {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Packages => "Packages",
            ResourceType::Secrets => "Secrets",
            ResourceType::Manifest => "Manifest",
            ResourceType::Marbles => "Marbles",
        }
    }

    /// Parse the manifest spelling (case-sensitive, as MarbleRun).
    pub fn parse(text: &str) -> Option<ResourceType> {
        [
            ResourceType::Packages,
            ResourceType::Secrets,
            ResourceType::Manifest,
            ResourceType::Marbles,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// `Roles.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The resource type.
    pub resource_type: ResourceType,
    /// Names of the resources (empty for `Manifest`).
    pub resource_names: Vec<String>,
    /// Actions in canonical spelling (`UpdateSecurityVersion`, `ReadSecret`, `WriteSecret`,
    /// `UpdateManifest`, `RevokeMarble`).
    pub actions: Vec<String>,
}

/// Canonical role action names.
pub const ACTIONS: [&str; 5] = [
    "UpdateSecurityVersion",
    "ReadSecret",
    "WriteSecret",
    "UpdateManifest",
    "RevokeMarble",
];

/// `TLS.<tag>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsTag {
    /// Outgoing connections.
    pub outgoing: Vec<TlsEntry>,
    /// Incoming connections.
    pub incoming: Vec<TlsEntry>,
}

/// One entry of a TLS tag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsEntry {
    /// Port.
    pub port: String,
    /// Address (outgoing only).
    pub addr: String,
    /// Certificate secret for incoming connections from outside the mesh.
    pub cert: Option<String>,
    /// Accept clients without certificates (requires `cert`).
    pub disable_client_auth: bool,
}

/// How the coordinator seals its state (`Config.SealMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SealMode {
    /// Signer-derived seal key (MarbleRun default, also for `""`).
    #[default]
    ProductKey,
    /// Measurement-derived seal key.
    UniqueKey,
    /// No persistence.
    Disabled,
}

impl SealMode {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SealMode::ProductKey => "ProductKey",
            SealMode::UniqueKey => "UniqueKey",
            SealMode::Disabled => "Disabled",
        }
    }
}

/// Optional coordinator features (`Config.FeatureGates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureGate {
    /// `SignQuoteEndpoint`: the coordinator signs quotes on request.
    SignQuoteEndpoint,
    /// `MonotonicCounter`: marbles may use monotonic counters.
    MonotonicCounter,
}

impl FeatureGate {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureGate::SignQuoteEndpoint => "SignQuoteEndpoint",
            FeatureGate::MonotonicCounter => "MonotonicCounter",
        }
    }
}

/// What the coordinator's TCB monitor does when a running marble's platform falls out of
/// its package's policy (`Config.TCBChangeAction`, a Quarry extension; MarbleRun manifests
/// have no such key and get [`TcbChangeAction::Warn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TcbChangeAction {
    /// Log, count and publish the change only (the default).
    #[default]
    Warn,
    /// Also refuse the marble's next certificate renewal (`tcb-out-of-policy`).
    RefuseRenewal,
    /// Also revoke the marble, as an operator's revocation would.
    Revoke,
}

impl TcbChangeAction {
    /// Every manifest spelling, in order.
    pub const ALL: [&'static str; 3] = ["warn", "refuse-renewal", "revoke"];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbChangeAction::Warn => "warn",
            TcbChangeAction::RefuseRenewal => "refuse-renewal",
            TcbChangeAction::Revoke => "revoke",
        }
    }

    /// Parses the manifest spelling (already canonicalised, case-sensitive here).
    pub fn parse(text: &str) -> Option<TcbChangeAction> {
        match text {
            "warn" => Some(TcbChangeAction::Warn),
            "refuse-renewal" => Some(TcbChangeAction::RefuseRenewal),
            "revoke" => Some(TcbChangeAction::Revoke),
            _ => None,
        }
    }
}

/// `Config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// SPIFFE trust domain (Quarry `TrustDomain`).
    pub trust_domain: String,
    /// Seal mode.
    pub seal_mode: SealMode,
    /// Enabled feature gates.
    pub feature_gates: Vec<FeatureGate>,
    /// Acknowledgements needed for a full update; 0 = all `UpdateManifest` users.
    pub update_threshold: u64,
    /// Shamir threshold for recovery; 0 = all keys.
    pub recovery_threshold: u64,
    /// Make a new root secret on the next full update.
    pub rotate_root_secret: bool,
    /// What the TCB monitor does when a marble falls out of policy (`TCBChangeAction`).
    pub tcb_change_action: TcbChangeAction,
}

impl Config {
    /// True when `gate` is enabled.
    pub fn feature_enabled(&self, gate: FeatureGate) -> bool {
        self.feature_gates.contains(&gate)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            trust_domain: crate::spiffe::DEFAULT_TRUST_DOMAIN.to_string(),
            seal_mode: SealMode::default(),
            feature_gates: Vec::new(),
            update_threshold: 0,
            recovery_threshold: 0,
            rotate_root_secret: false,
            tcb_change_action: TcbChangeAction::Warn,
        }
    }
}
