//! A tenant's optional Rego constraint, evaluated in-process with regorus.
//!
//! The module must declare `package custos`; `data.custos.allow` must be true for a request
//! to be allowed (undefined counts as false, like OPA's `default allow := false`). The input
//! document is `{"principal": {...}, "permission", "tenant", "attributes", "time_ms"}`.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::decision::AccessRequest;
use super::principal::Principal;

/// Longest one evaluation may run before it fails (and the request is denied).
const EVAL_LIMIT: Duration = Duration::from_millis(50);
const QUERY: &str = "data.custos.allow";

#[derive(Debug, thiserror::Error)]
pub enum RegoError {
    #[error("the Rego module does not compile: {0}")]
    Compile(String),
    #[error("the Rego module must declare `package custos`")]
    Package,
    #[error("data.custos.allow evaluated to {0}, not a boolean")]
    NotBoolean(String),
    #[error("evaluating data.custos.allow: {0}")]
    Eval(String),
}

/// A compiled module. The engine evaluates one input at a time, so evaluations of one tenant
/// take turns; each is bounded by [`EVAL_LIMIT`].
pub struct RegoConstraint {
    engine: Mutex<Engine>,
}

impl RegoConstraint {
    pub fn compile(source: &str) -> Result<RegoConstraint, RegoError> {
        let mut engine = Engine::new();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_LIMIT,
            // Checked every 64 steps; a constant, so it cannot be zero.
            check_interval: NonZeroU32::new(64).expect("64 is not zero"),
        });
        let package =
            engine.add_policy("tenant.rego".into(), source.into()).map_err(|e| RegoError::Compile(e.to_string()))?;
        if package != "data.custos" {
            return Err(RegoError::Package);
        }
        let constraint = RegoConstraint { engine: Mutex::new(engine) };
        // Evaluate once with an empty input so a module that can never yield a boolean is
        // refused when written, not at the first request.
        constraint.evaluate(Value::new_object())?;
        Ok(constraint)
    }

    pub fn allows(&self, principal: &Principal, request: &AccessRequest) -> Result<bool, RegoError> {
        let input = serde_json::json!({
            "principal": {
                "subject": principal.subject,
                "kind": principal.kind.as_str(),
                "tenant": principal.tenant.as_ref().map(|t| t.as_str()),
                "roles": principal.roles,
                "lob": principal.lob,
                "mfa_verified": principal.mfa_verified,
            },
            "permission": request.permission.as_str(),
            "tenant": request.tenant.map(|t| t.as_str()),
            "attributes": request.attributes,
            "time_ms": request.now_ms,
        });
        let input = Value::from_json_str(&input.to_string()).map_err(|e| RegoError::Eval(e.to_string()))?;
        self.evaluate(input)
    }

    fn evaluate(&self, input: Value) -> Result<bool, RegoError> {
        // A poisoned lock means an evaluation panicked inside regorus; the engine holds no
        // state between evaluations that the panic could have broken, so keep using it.
        let mut engine = self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        engine.set_input(input);
        match engine.eval_rule(QUERY.into()).map_err(|e| RegoError::Eval(e.to_string()))? {
            Value::Bool(allowed) => Ok(allowed),
            Value::Undefined => Ok(false),
            other => Err(RegoError::NotBoolean(other.to_string())),
        }
    }
}
