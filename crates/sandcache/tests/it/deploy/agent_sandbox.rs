//! deploy/k8s/sandbox-template.yaml and sandbox-warmpool.yaml: the warm pool
//! as the platform claims it, through agent-sandbox's SandboxTemplate and
//! SandboxWarmPool. There is no cluster here, and CI cannot fetch
//! agent-sandbox's CRDs, so:
//! - the template's pod is compared with deployment.yaml's, field by field:
//!   everything the other deploy tests check of the Deployment's pod then
//!   holds for the pool's;
//! - that pod is validated as a core/v1 Pod with `kubernetes-validate`;
//! - the CRD fields the two files use are checked against a summary of the
//!   CRDs' schemas, written by hand from the release below (deploy/README.md
//!   says how the files were checked against the CRDs themselves).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use serde_json::{Value, json};

use super::{container, env_of, kind, read};

const TEMPLATE: &str = "deploy/k8s/sandbox-template.yaml";
const WARM_POOL: &str = "deploy/k8s/sandbox-warmpool.yaml";

/// The release whose CRDs [`TEMPLATE_SPEC`] and [`WARM_POOL_SPEC`] summarise.
const AGENT_SANDBOX: &str = "agent-sandbox v0.5.6 (211b7579cabed9460c1a692eb687084ff4c5879d)";

/// The group and version of both kinds: v1alpha1, as the platform's claims
/// use it (deprecated in v0.5.6 for v1beta1, the same fields for these two
/// kinds but `replicas`, optional there).
const API_VERSION: &str = "extensions.agents.x-k8s.io/v1alpha1";

/// What a pool's runner has beyond the Deployment's: its pre-warm setting,
/// pool-wide (warm pools refuse per-claim env).
const POOL_ENV: [&str; 2] = ["SANDCACHE_PREWARM", "SANDCACHE_PREWARM_REFRESH_SECS"];

/// Label and annotation prefixes agent-sandbox keeps for itself: its
/// controller drops them from a template's pod (`hasSystemReservedPrefix`).
const RESERVED_PREFIXES: [&str; 2] = ["agents.x-k8s.io/", "extensions.agents.x-k8s.io/"];

/// A field's shape in a CRD's openAPIV3Schema, as far as the manifests use it.
enum Shape {
    /// An object with these fields (name, required, shape). Any other name
    /// is unknown to the schema: the API server would drop it, silently.
    Object(&'static [(&'static str, bool, Shape)]),
    /// A string: one of these, when any are listed.
    Str(&'static [&'static str]),
    /// An integer, at least this.
    Int(i64),
    /// Strings by string (labels, annotations).
    StringMap,
    /// A core/v1 PodSpec, embedded whole in the CRD: checked as a Pod's by
    /// `the_pool_pod_validates_as_a_core_pod`.
    PodSpec,
}

use Shape::{Int, Object, PodSpec, Str, StringMap};

/// SandboxTemplate's `spec`, the fields used here (the same in v1alpha1 and
/// v1beta1). Unused, also in the schema: `networkPolicy`,
/// `volumeClaimTemplates`, `service` (and v1beta1's
/// `volumeClaimTemplatesPolicy`).
const TEMPLATE_SPEC: Shape = Object(&[
    (
        "podTemplate",
        true,
        Object(&[
            ("metadata", false, Object(&[("labels", false, StringMap), ("annotations", false, StringMap)])),
            ("spec", true, PodSpec),
        ]),
    ),
    ("networkPolicyManagement", false, Str(&["Managed", "Unmanaged"])),
    ("envVarsInjectionPolicy", false, Str(&["Allowed", "Overrides", "Disallowed"])),
]);

/// SandboxWarmPool's `spec`, all of it: `replicas` is required in v1alpha1
/// (v1beta1 defaults it to 1).
const WARM_POOL_SPEC: Shape = Object(&[
    ("replicas", true, Int(0)),
    ("sandboxTemplateRef", true, Object(&[("name", true, Str(&[]))])),
    ("updateStrategy", false, Object(&[("type", false, Str(&["Recreate", "OnReplenish"]))])),
]);

/// Where `v` does not fit `shape`, by path.
fn misfits(v: &Value, shape: &Shape, path: &str, out: &mut Vec<String>) {
    match shape {
        Object(fields) => {
            let Some(map) = v.as_object() else { return out.push(format!("{path}: not an object: {v}")) };
            for k in map.keys().filter(|k| !fields.iter().any(|(name, ..)| name == k)) {
                out.push(format!("{path}.{k}: not in the CRD's schema"));
            }
            for (name, required, field) in fields.iter() {
                match map.get(*name) {
                    Some(x) => misfits(x, field, &format!("{path}.{name}"), out),
                    None if *required => out.push(format!("{path}.{name}: required")),
                    None => {}
                }
            }
        }
        Str(one_of) => match v.as_str() {
            Some(s) if one_of.is_empty() || one_of.contains(&s) => {}
            _ => out.push(format!("{path}: {v} is not a string of {one_of:?}")),
        },
        Int(min) => {
            if v.as_i64().is_none_or(|n| n < *min) {
                out.push(format!("{path}: {v} is not an integer >= {min}"));
            }
        }
        StringMap => {
            if !v.as_object().is_some_and(|m| m.values().all(Value::is_string)) {
                out.push(format!("{path}: {v} is not a map of strings"));
            }
        }
        PodSpec => {
            if !v.is_object() {
                out.push(format!("{path}: not an object: {v}"));
            }
        }
    }
}

/// Where a manifest of `kind` does not fit its CRD's summary.
fn crd_misfits(doc: &Value, kind: &str, spec: &Shape) -> Vec<String> {
    let mut out = Vec::new();
    if doc["apiVersion"] != API_VERSION || doc["kind"] != kind {
        out.push(format!("{} {}: not {API_VERSION} {kind}", doc["apiVersion"], doc["kind"]));
    }
    if doc["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        out.push("metadata.name: required".to_owned());
    }
    for k in doc.as_object().unwrap().keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()) {
            out.push(format!("{k}: not in the CRD's schema"));
        }
    }
    misfits(&doc["spec"], spec, "spec", &mut out);
    out
}

/// Where two JSON values differ, by path; array items are named by their
/// `name` when they have one.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let (p, q) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                diff(p, q, &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let item = p["name"].as_str().map_or(i.to_string(), |n| format!("{i}:{n}"));
                diff(p, q, &format!("{path}[{item}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} in deployment.yaml, {b} in the template")),
        _ => {}
    }
}

/// The template's pod spec without the pool's own settings, and those.
fn without_pool_env(pod: &Value) -> (Value, BTreeMap<String, String>) {
    let pool = env_of(container(pod, "containers", "runner"))
        .into_iter()
        .filter(|(k, _)| POOL_ENV.contains(&k.as_str()))
        .collect();
    let mut pod = pod.clone();
    for c in pod["containers"].as_array_mut().unwrap().iter_mut().filter(|c| c["name"] == "runner") {
        c["env"].as_array_mut().unwrap().retain(|e| !POOL_ENV.iter().any(|k| e["name"] == *k));
    }
    (pod, pool)
}

/// The pool's pod is the Deployment's (securityContext and capabilities,
/// init containers and the admin key's derivation, volumes and mounts, env,
/// ports, probes, grace period, resources, ServiceAccount), plus the pool's
/// pre-warm setting in the runner's env alone; its labels are the ones the
/// NetworkPolicy selects, which governs it rather than the controller's;
/// claims may set no env; the warm pool names the template.
#[test]
fn the_pool_template_runs_the_deployments_pod() {
    let deployment = kind("deploy/k8s/deployment.yaml", "Deployment");
    let template = kind(TEMPLATE, "SandboxTemplate");
    let pool = kind(WARM_POOL, "SandboxWarmPool");
    let want = &deployment["spec"]["template"];
    let got = &template["spec"]["podTemplate"];

    let (pod, pool_env) = without_pool_env(&got["spec"]);
    let mut diffs = Vec::new();
    diff(&want["spec"], &pod, "spec", &mut diffs);
    assert!(diffs.is_empty(), "{TEMPLATE}'s pod is not deployment.yaml's:\n{}", diffs.join("\n"));
    // The comparison compares: a capability more is found.
    let mut wider = pod.clone();
    wider["containers"][0]["securityContext"]["capabilities"]["add"].as_array_mut().unwrap().push(json!("SYS_ADMIN"));
    let mut found = Vec::new();
    diff(&want["spec"], &wider, "spec", &mut found);
    assert_eq!(found.len(), 1, "{found:?}");

    // The pre-warm setting: in the runner's env, nowhere else.
    assert_eq!(pool_env.keys().map(String::as_str).collect::<Vec<_>>(), POOL_ENV, "the pool's pre-warm setting");
    assert!(!pool_env["SANDCACHE_PREWARM"].is_empty());
    assert!(pool_env["SANDCACHE_PREWARM_REFRESH_SECS"].parse::<u64>().is_ok_and(|s| s > 0), "{pool_env:?}");
    // YAML 1.1 (Kubernetes) would read an unquoted number as one, not a string.
    assert!(read(TEMPLATE).contains(&format!("\"{}\"", pool_env["SANDCACHE_PREWARM_REFRESH_SECS"])), "quoted");
    for c in got["spec"]["initContainers"].as_array().unwrap() {
        let names: Vec<&str> = c["env"].as_array().into_iter().flatten().filter_map(|e| e["name"].as_str()).collect();
        assert!(!POOL_ENV.iter().any(|k| names.contains(k)), "{}: {names:?}", c["name"]);
    }

    // The NetworkPolicy reaches the pool's pods by their labels, and it is
    // the policy: the controller's own would let out only public addresses
    // (no cluster DNS, no Pod Identity agent, no VPC endpoints).
    assert_eq!(got["metadata"]["labels"], want["metadata"]["labels"], "the Deployment's pod labels");
    let np = kind("deploy/k8s/networkpolicy.yaml", "NetworkPolicy");
    for (k, v) in np["spec"]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&got["metadata"]["labels"][k], v, "the NetworkPolicy selects the pool's pods by {k}");
        assert!(!RESERVED_PREFIXES.iter().any(|p| k.starts_with(p)), "{k}: the controller drops it from pods");
    }
    assert_eq!(template["spec"]["networkPolicyManagement"], "Unmanaged");
    // Nothing per claim: a claim that sets env is refused.
    assert_eq!(template["spec"]["envVarsInjectionPolicy"], "Disallowed");

    // The warm pool is of this template, and holds runners.
    assert_eq!(pool["spec"]["sandboxTemplateRef"]["name"], template["metadata"]["name"]);
    assert!(pool["spec"]["replicas"].as_u64().is_some_and(|r| r >= 1), "a warm pool");
}

/// Every field of agent-sandbox's kinds the two files use is in its CRDs'
/// schemas (the summary above, from [`AGENT_SANDBOX`]): names, required
/// fields, enums. A misspelt field would not fail at apply; the API server
/// would drop it.
#[test]
fn agent_sandbox_fields_are_in_its_crds() {
    let template = kind(TEMPLATE, "SandboxTemplate");
    let pool = kind(WARM_POOL, "SandboxWarmPool");
    assert_eq!(crd_misfits(&template, "SandboxTemplate", &TEMPLATE_SPEC), Vec::<String>::new(), "{AGENT_SANDBOX}");
    assert_eq!(crd_misfits(&pool, "SandboxWarmPool", &WARM_POOL_SPEC), Vec::<String>::new(), "{AGENT_SANDBOX}");
    // Labels and annotations of the pod: none the controller keeps for itself.
    let metadata = template["spec"]["podTemplate"]["metadata"].as_object().unwrap();
    for key in metadata.values().filter_map(Value::as_object).flat_map(|m| m.keys()) {
        assert!(!RESERVED_PREFIXES.iter().any(|p| key.starts_with(p)), "{key}: the controller drops it from pods");
    }

    // The check fails what it should.
    let broken = |doc: &Value, edit: &dyn Fn(&mut Value)| {
        let mut d = doc.clone();
        edit(&mut d);
        d
    };
    let misspelt = broken(&template, &|d| {
        d["spec"]["networkPolicyManagment"] = d["spec"]["networkPolicyManagement"].take();
        d["spec"].as_object_mut().unwrap().remove("networkPolicyManagement");
    });
    assert!(!crd_misfits(&misspelt, "SandboxTemplate", &TEMPLATE_SPEC).is_empty(), "a misspelt field");
    let no_spec = broken(&template, &|d| {
        d["spec"]["podTemplate"].as_object_mut().unwrap().remove("spec");
    });
    assert!(!crd_misfits(&no_spec, "SandboxTemplate", &TEMPLATE_SPEC).is_empty(), "a required field");
    let bad_enum = broken(&pool, &|d| d["spec"]["updateStrategy"]["type"] = json!("RollingUpdate"));
    assert!(!crd_misfits(&bad_enum, "SandboxWarmPool", &WARM_POOL_SPEC).is_empty(), "an enum");
    let no_replicas = broken(&pool, &|d| {
        d["spec"].as_object_mut().unwrap().remove("replicas");
    });
    assert!(!crd_misfits(&no_replicas, "SandboxWarmPool", &WARM_POOL_SPEC).is_empty(), "v1alpha1 requires replicas");
}

/// The template's pod, as the controller makes it (its labels, its spec),
/// against Kubernetes' own Pod schema, strictly, for the versions
/// `kubernetes_manifests_validate_strictly` uses; `kubernetes-validate` has
/// no schema for the CRD kinds themselves.
#[test]
fn the_pool_pod_validates_as_a_core_pod() {
    let test = "the_pool_pod_validates_as_a_core_pod";
    let hint = "scripts/install-kubernetes-validate.sh";
    let Some(tool) = sandcache_testkit::ci::var_or_skip("SANDCACHE_KUBERNETES_VALIDATE", test, hint) else { return };
    let template = kind(TEMPLATE, "SandboxTemplate");
    let pod_template = &template["spec"]["podTemplate"];
    let pod = |spec: &Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sandcache-pool-abcde", "labels": pod_template["metadata"]["labels"]},
            "spec": spec,
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("pod.yaml");
    fs::write(&file, pod(&pod_template["spec"]).to_string()).unwrap();
    for version in ["1.31.0", "1.37.0"] {
        let out = Command::new(&tool).args(["--strict", "-k", version]).arg(&file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubernetes-validate --strict -k {version}:\n{text}");
        assert_eq!(text.matches(" passed for resource pod/").count(), 1, "{text}");
    }
    // Strict means strict: a misspelt field of the pod fails.
    let mut spec = pod_template["spec"].clone();
    spec["terminationGracePeriodSecond"] = spec["terminationGracePeriodSeconds"].take();
    spec.as_object_mut().unwrap().remove("terminationGracePeriodSeconds");
    fs::write(&file, pod(&spec).to_string()).unwrap();
    let out = Command::new(&tool).arg("--strict").arg(&file).output().unwrap();
    assert!(!out.status.success(), "a misspelt field must fail");
}
