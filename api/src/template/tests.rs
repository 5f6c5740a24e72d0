use super::*;
use crate::http::{KeyEncoding, Segment, Value};
use crate::manifest::SecretKind;

/// A context with one secret of each interesting shape; bytes are recognisable.
struct Ctx;

impl TemplateContext for Ctx {
    fn lookup(&self, reference: &Reference) -> Result<SecretMaterial, String> {
        let material = |kind, cert: Option<&[u8]>, public: &[u8], private: &[u8]| SecretMaterial {
            kind,
            cert_der: cert.map(<[u8]>::to_vec),
            public: public.to_vec(),
            private: crate::Secret::new(private.to_vec()),
        };
        match reference {
            Reference::Secret { name, .. } => match name.as_str() {
                "key" => Ok(material(
                    MaterialKind::Secret(SecretKind::SymmetricKey),
                    None,
                    &[0xab, 0xcd],
                    &[0xab, 0xcd],
                )),
                "tls" => Ok(material(
                    MaterialKind::Secret(SecretKind::CertEcdsa),
                    Some(b"CERTDER"),
                    b"PUBDER",
                    b"TOPSECRET",
                )),
                "pw" => Ok(material(
                    MaterialKind::Secret(SecretKind::Plain),
                    None,
                    b"hunter2",
                    b"hunter2",
                )),
                "nul" => Ok(material(
                    MaterialKind::Secret(SecretKind::Plain),
                    None,
                    b"TOP\0SECRET",
                    b"TOP\0SECRET",
                )),
                "empty" => Ok(material(
                    MaterialKind::Secret(SecretKind::Plain),
                    None,
                    b"",
                    b"",
                )),
                other => Err(format!("secret {other:?} is not defined")),
            },
            _ => Ok(material(MaterialKind::Reserved, Some(b"ROOT"), b"", b"")),
        }
    }
}

fn render(text: &str, target: Target) -> Result<Value, TemplateError> {
    Template::parse(text, target)?.render(&Ctx, target)
}

fn bytes(v: &Value) -> Vec<u8> {
    v.assemble(b"MARBLEKEY")
}

#[test]
fn function_and_pipeline_forms_render_the_same() {
    let a = render("k={{ hex .Secrets.key }};", Target::File).expect("function form");
    let b = render("k={{.Secrets.key|hex}};", Target::File).expect("pipeline form");
    assert_eq!(a, b);
    assert_eq!(bytes(&a), b"k=abcd;");
}

#[test]
fn trim_markers_remove_adjacent_whitespace_like_go() {
    let v = render("a \n\t{{- hex .Secrets.key -}} \n b", Target::File).expect("renders");
    assert_eq!(bytes(&v), b"aabcdb");
    // Without the space, "{{-3}}" is not a trim marker in Go; here it is simply invalid.
    assert!(render("{{-hex .Secrets.key}}", Target::File).is_err());
}

#[test]
fn encoders_follow_marblerun() {
    let pem = render("{{ pem .Secrets.tls.Cert }}", Target::File).expect("pem cert");
    let text = String::from_utf8(bytes(&pem)).expect("utf8");
    assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"), "{text}");
    assert!(!text.contains('\r'), "PEM uses LF line endings as Go");
    let public = render("{{ pem .Secrets.tls.Public }}", Target::Env).expect("pem public");
    assert!(String::from_utf8(bytes(&public))
        .expect("utf8")
        .contains("BEGIN PUBLIC KEY"));
    let private = render("{{ pem .Secrets.tls.Private }}", Target::File).expect("pem private");
    assert!(String::from_utf8(bytes(&private))
        .expect("utf8")
        .contains("BEGIN PRIVATE KEY"));
    assert_eq!(
        bytes(&render("{{ raw .Secrets.tls }}", Target::File).expect("raw")),
        b"PUBDER"
    );
    assert_eq!(
        bytes(&render("{{ raw .Secrets.tls.Cert }}", Target::File).expect("raw")),
        b"CERTDER"
    );
    assert_eq!(
        bytes(&render("{{ base64 .Secrets.key }}", Target::Env).expect("b64")),
        b"q80="
    );
    assert_eq!(
        bytes(&render("{{ string .Secrets.pw }}", Target::Env).expect("string")),
        b"hunter2"
    );
    let root = render("{{ pem .Quarry.RootCA.Cert }}", Target::File).expect("alias");
    assert_eq!(
        root,
        render("{{ pem .MarbleRun.RootCA.Cert }}", Target::File).expect("root")
    );
}

#[test]
fn marble_private_key_is_left_to_the_sidecar() {
    let v = render("k={{ pem .MarbleRun.MarbleCert.Private }}", Target::File).expect("renders");
    assert_eq!(
        v,
        Value(vec![
            Segment::Data(b"k=".to_vec()),
            Segment::MarblePrivateKey(KeyEncoding::Pem)
        ])
    );
    let err = render("{{ string .MarbleRun.MarbleCert.Private }}", Target::Env)
        .expect_err("string of the marble key");
    assert!(
        matches!(
            err,
            TemplateError::Unsupported {
                function: "string",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn functions_are_refused_where_marblerun_refuses_them() {
    let err = Template::parse("{{ raw .Secrets.key }}", Target::Env).expect_err("raw in Env");
    assert_eq!(
        err.to_string(),
        "function raw is not allowed in Env (use hex, base64 or, for plain secrets, string)"
    );
    let err =
        Template::parse("{{ string .Secrets.pw }}", Target::File).expect_err("string in Files");
    assert!(matches!(
        err,
        TemplateError::NotAllowedHere {
            function: "string",
            section: "Files",
            ..
        }
    ));
    let err =
        Template::parse("{{ pem .Secrets.key }}", Target::File).expect_err("pem of bare secret");
    assert!(
        matches!(
            err,
            TemplateError::Unsupported {
                function: "pem",
                ..
            }
        ),
        "{err}"
    );
    let err = Template::parse("{{ string .Secrets.tls.Cert }}", Target::Env)
        .expect_err("string of a part");
    assert!(
        matches!(
            err,
            TemplateError::Unsupported {
                function: "string",
                ..
            }
        ),
        "{err}"
    );
    let err = render("{{ string .Secrets.key }}", Target::Env).expect_err("string of symmetric");
    assert!(err.to_string().contains("plain"), "{err}");
}

#[test]
fn reserved_certificates_support_only_cert() {
    for (text, reserved, part) in [
        ("{{ pem .MarbleRun.RootCA.Private }}", "RootCA", ".Private"),
        (
            "{{ pem .MarbleRun.CoordinatorRoot.Public }}",
            "CoordinatorRoot",
            ".Public",
        ),
        (
            "{{ hex .Quarry.CoordinatorIntermediate }}",
            "CoordinatorIntermediate",
            "the bare value",
        ),
    ] {
        let err = Template::parse(text, Target::File).expect_err(text);
        assert_eq!(
            err,
            TemplateError::ReservedPart {
                reserved,
                part: part.to_string()
            }
        );
    }
}

#[test]
fn other_go_template_syntax_is_refused() {
    for text in [
        "{{ if .Secrets.key }}x{{ end }}",
        "{{ index .Secrets \"key\" }}",
        "{{/* comment */}}",
        "{{ hex .Secrets.key",
        "{{ }}",
        "{{ hex .Secrets.key.Raw }}",
        "{{ hex .secrets.key }}",
        "{{ hex .Values.key }}",
        "{{ hex .Secrets.my-key }}",
        "{{ hex .Secrets.key | base64 }}",
    ] {
        assert!(
            Template::parse(text, Target::File).is_err(),
            "{text} must be refused"
        );
    }
    let err = Template::parse("{{ upper .Secrets.key }}", Target::File).expect_err("unknown fn");
    assert_eq!(err, TemplateError::UnknownFunction("upper".into()));
}

#[test]
fn text_without_actions_is_literal_even_when_not_utf8() {
    let t = Template::parse_bytes(b"\xff\xfe }} plain", Target::File).expect("literal");
    assert!(t.is_literal());
    assert_eq!(
        bytes(&t.render(&Ctx, Target::File).expect("renders")),
        b"\xff\xfe }} plain"
    );
    let t = Template::parse("", Target::Env).expect("empty");
    assert_eq!(t.render(&Ctx, Target::Env).expect("renders"), Value(vec![]));
}

#[test]
fn errors_name_the_secret_but_never_its_bytes() {
    let err = render("{{ string .Secrets.nul }}", Target::Env).expect_err("NUL");
    assert_eq!(err, TemplateError::NulInEnv);
    let err = render("{{ hex .Secrets.empty }}", Target::File).expect_err("empty");
    assert_eq!(err.to_string(), "secret .Secrets.empty has no value");
    let err =
        render("{{ hex .Previous.Secrets.missing.Cert }}", Target::File).expect_err("missing");
    assert_eq!(
        err.to_string(),
        ".Previous.Secrets.missing.Cert: secret \"missing\" is not defined"
    );
    let err = render("{{ hex .Secrets.key.Cert }}", Target::File).expect_err("no cert");
    assert!(matches!(err, TemplateError::EmptyValue(_)), "{err}");
    for e in [err.to_string(), format!("{err:?}")] {
        assert!(!e.contains("TOPSECRET") && !e.contains("abcd"), "{e}");
    }
}

#[test]
fn actions_lists_references_in_order() {
    let t = Template::parse(
        "{{ hex .Secrets.key }}{{ pem .Previous.Secrets.tls.Cert }}{{ raw .MarbleRun.MarbleCert.Cert }}",
        Target::File,
    )
    .expect("parses");
    let refs: Vec<String> = t.actions().map(|a| a.reference.to_string()).collect();
    assert_eq!(
        refs,
        [
            ".Secrets.key",
            ".Previous.Secrets.tls.Cert",
            ".MarbleRun.MarbleCert.Cert"
        ]
    );
}
