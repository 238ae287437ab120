use crate::{Config, ConfigError};

impl Config {
    /// Checks the rules that span fields or need more than a type to express. Returns every
    /// violation; an empty list means the configuration is usable.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, path: &str, reason: String| {
            if !ok {
                errors.push(ConfigError::new(path, reason));
            }
        };
        let r = &self.raft;
        let l = &self.limits;

        check(self.node.id > 0, "node.id", "must be a positive integer".into());
        check(!self.node.data_dir.as_os_str().is_empty(), "node.data_dir", "must not be empty".into());

        check(r.heartbeat_interval_ms >= 10, "raft.heartbeat_interval_ms", "must be at least 10".into());
        check(
            r.election_timeout_ms_min >= 3 * r.heartbeat_interval_ms,
            "raft.election_timeout_ms_min",
            format!(
                "must be at least three heartbeat intervals ({} ms) so followers do not start elections between heartbeats",
                3 * r.heartbeat_interval_ms
            ),
        );
        check(
            r.election_timeout_ms_max > r.election_timeout_ms_min,
            "raft.election_timeout_ms_max",
            format!("must be greater than raft.election_timeout_ms_min ({})", r.election_timeout_ms_min),
        );
        check(r.snapshot_after_entries >= 1, "raft.snapshot_after_entries", "must be at least 1".into());
        check(
            (64 * 1024..=64 * 1024 * 1024).contains(&r.snapshot_chunk_bytes),
            "raft.snapshot_chunk_bytes",
            "must be between 64 KiB and 64 MiB".into(),
        );
        check(
            r.install_snapshot_timeout_ms >= r.rpc_timeout_ms,
            "raft.install_snapshot_timeout_ms",
            format!("must be at least raft.rpc_timeout_ms ({})", r.rpc_timeout_ms),
        );
        check(
            (1..=1_000).contains(&r.max_entries_per_append),
            "raft.max_entries_per_append",
            "must be between 1 and 1000".into(),
        );
        check(
            r.rpc_timeout_ms >= r.heartbeat_interval_ms,
            "raft.rpc_timeout_ms",
            format!("must be at least raft.heartbeat_interval_ms ({})", r.heartbeat_interval_ms),
        );
        check(
            (16 * 1024 * 1024..=64 * 1024 * 1024 * 1024).contains(&r.engine_cache_bytes),
            "raft.engine_cache_bytes",
            "must be between 16 MiB and 64 GiB".into(),
        );
        check(
            (1_000..=10_000_000).contains(&r.dedup_window_entries),
            "raft.dedup_window_entries",
            "must be between 1000 and 10000000".into(),
        );
        check(
            (1..=10_000).contains(&r.max_proposals_per_entry),
            "raft.max_proposals_per_entry",
            "must be between 1 and 10000".into(),
        );
        check(
            (64 * 1024..=16 * 1024 * 1024).contains(&r.max_entry_bytes),
            "raft.max_entry_bytes",
            "must be between 64 KiB and 16 MiB".into(),
        );
        check(
            (1..=64).contains(&r.max_batches_in_flight),
            "raft.max_batches_in_flight",
            "must be between 1 and 64".into(),
        );
        check(
            self.api.listen_addr != r.listen_addr || r.listen_addr.port() == 0,
            "raft.listen_addr",
            "must differ from api.listen_addr".into(),
        );

        let tls = &self.tls;
        let given = [&tls.ca_file, &tls.cert_file, &tls.key_file].iter().filter(|f| f.is_some()).count();
        check(given == 0 || given == 3, "tls", "ca_file, cert_file and key_file must be given together".into());
        for (path, file) in
            [("tls.ca_file", &tls.ca_file), ("tls.cert_file", &tls.cert_file), ("tls.key_file", &tls.key_file)]
        {
            if let Some(file) = file {
                check(file.is_file(), path, format!("file {} does not exist", file.display()));
            }
        }

        check(
            (1024..=64 * 1024 * 1024).contains(&l.max_body_bytes),
            "limits.max_body_bytes",
            "must be between 1 KiB and 64 MiB".into(),
        );
        check((1..=100_000).contains(&l.max_batch), "limits.max_batch", "must be between 1 and 100000".into());
        check(
            (1..=1_000_000).contains(&l.max_in_flight),
            "limits.max_in_flight",
            "must be between 1 and 1000000".into(),
        );
        check(
            l.request_timeout_ms >= r.election_timeout_ms_max,
            "limits.request_timeout_ms",
            format!(
                "must be at least raft.election_timeout_ms_max ({}) so a request can outlive one election",
                r.election_timeout_ms_max
            ),
        );
        check((1..=100).contains(&l.forward_attempts), "limits.forward_attempts", "must be between 1 and 100".into());
        check(
            (1..=l.max_in_flight).contains(&l.tenant_max_in_flight),
            "limits.tenant_max_in_flight",
            format!("must be between 1 and limits.max_in_flight ({})", l.max_in_flight),
        );
        let c = &self.custody;
        let sources = [c.master_key_file.is_some(), c.master_key_env.is_some(), c.master_key_command.is_some()];
        check(
            sources.iter().filter(|given| **given).count() <= 1,
            "custody",
            "give only one of master_key_file, master_key_env and master_key_command".into(),
        );
        if let Some(file) = &c.master_key_file {
            check(file.is_file(), "custody.master_key_file", format!("file {} does not exist", file.display()));
        }
        if let Some(argv) = &c.master_key_command {
            check(!argv.is_empty(), "custody.master_key_command", "must name a program".into());
        }
        check(c.key_cache_ttl_ms >= 1000, "custody.key_cache_ttl_ms", "must be at least 1000".into());
        check(
            (16..=10_000_000).contains(&c.key_cache_max_entries),
            "custody.key_cache_max_entries",
            "must be between 16 and 10000000".into(),
        );
        check(c.schedule_interval_ms >= 100, "custody.schedule_interval_ms", "must be at least 100".into());
        check(
            c.edge != crate::EdgeProvider::EncryptedFs || sources.iter().any(|given| *given),
            "custody.edge",
            "\"encrypted-fs\" needs a master key (master_key_file, master_key_env or master_key_command)".into(),
        );
        let v = &c.vault;
        check(
            c.provider != crate::CoreProvider::Vault || v.address.is_some(),
            "custody.vault.address",
            "is required when custody.provider is \"vault\"".into(),
        );
        if let Some(address) = &v.address {
            check(
                address.starts_with("https://") || address.starts_with("http://"),
                "custody.vault.address",
                "must be an http:// or https:// URL".into(),
            );
            match v.auth {
                crate::VaultAuthMethod::Token => check(
                    v.token_file.is_some() != v.token_env.is_some(),
                    "custody.vault",
                    "token auth needs exactly one of token_file and token_env".into(),
                ),
                crate::VaultAuthMethod::Approle => check(
                    v.approle_role_id.is_some() && v.approle_secret_id_file.is_some(),
                    "custody.vault",
                    "approle auth needs approle_role_id and approle_secret_id_file".into(),
                ),
                crate::VaultAuthMethod::Kubernetes => check(
                    v.kubernetes_role.is_some(),
                    "custody.vault.kubernetes_role",
                    "is required for kubernetes auth".into(),
                ),
            }
        }
        if let Some(file) = &v.ca_file {
            check(file.is_file(), "custody.vault.ca_file", format!("file {} does not exist", file.display()));
        }
        for (i, pin) in v.server_cert_sha256.iter().enumerate() {
            check(
                crate::model::parse_sha256_fingerprint(pin).is_some(),
                &format!("custody.vault.server_cert_sha256[{i}]"),
                "must be a SHA-256 digest: 64 hex digits, optionally ':' between bytes".into(),
            );
        }
        check(
            v.server_cert_sha256.is_empty() || v.address.as_deref().is_some_and(|a| a.starts_with("https://")),
            "custody.vault.server_cert_sha256",
            "pins a certificate, so custody.vault.address must be an https:// URL".into(),
        );
        for (path, value) in [
            ("custody.vault.namespace_prefix", &v.namespace_prefix),
            ("custody.vault.transit_mount", &v.transit_mount),
            ("custody.vault.root_key_name", &v.root_key_name),
        ] {
            check(
                !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                path,
                "must be a non-empty name of letters, digits, '-' and '_'".into(),
            );
        }
        check(v.request_timeout_ms >= 100, "custody.vault.request_timeout_ms", "must be at least 100".into());
        check(
            (1..=1000).contains(&v.breaker_failures),
            "custody.vault.breaker_failures",
            "must be between 1 and 1000".into(),
        );
        check(v.breaker_cooldown_ms >= 100, "custody.vault.breaker_cooldown_ms", "must be at least 100".into());
        check(
            (1..=l.max_batch).contains(&c.max_batch_items),
            "custody.max_batch_items",
            format!("must be between 1 and limits.max_batch ({})", l.max_batch),
        );
        let a = &self.actors;
        check((1..=1000).contains(&a.max_restarts), "actors.max_restarts", "must be between 1 and 1000".into());
        check(a.restart_window_ms >= 1000, "actors.restart_window_ms", "must be at least 1000".into());
        check(a.restart_backoff_ms >= 1, "actors.restart_backoff_ms", "must be at least 1".into());
        check(
            a.restart_backoff_max_ms >= a.restart_backoff_ms,
            "actors.restart_backoff_max_ms",
            format!("must be at least actors.restart_backoff_ms ({})", a.restart_backoff_ms),
        );
        check(
            (1_000..=7 * 24 * 3_600_000).contains(&a.idle_stop_ms),
            "actors.idle_stop_ms",
            "must be between 1000 (1 s) and 604800000 (7 days)".into(),
        );
        // A stopping tree drops its tenant's cached keys; none may still be fresh then, or a
        // core provider outage would be ridden out for less than the cache promises.
        check(
            a.idle_stop_ms >= self.custody.key_cache_ttl_ms,
            "actors.idle_stop_ms",
            format!("must be at least custody.key_cache_ttl_ms ({})", self.custody.key_cache_ttl_ms),
        );
        for (from, to) in &self.raft.dial_overrides {
            let addr = |a: &str| a.parse::<std::net::SocketAddr>().is_ok();
            check(
                addr(from) && addr(to),
                &format!("raft.dial_overrides.{from}"),
                "must map an IP:port to an IP:port".into(),
            );
        }
        self.validate_audit(&mut check);
        self.validate_identity(&mut check);
        self.validate_telemetry(&mut check);
        errors
    }

    fn validate_identity(&self, check: &mut impl FnMut(bool, &str, String)) {
        let i = &self.identity;
        for (name, tier) in &i.api_key_tiers {
            let path = format!("identity.api_key_tiers.{name}");
            check(
                !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                &path,
                "tier names are 1 to 64 letters, digits or '-'".into(),
            );
            check(
                tier.per_second.is_finite() && tier.per_second > 0.0,
                &format!("{path}.per_second"),
                "must be a positive number".into(),
            );
            check(tier.burst >= 1, &format!("{path}.burst"), "must be at least 1".into());
        }
        check(
            i.api_key_tiers.contains_key(&i.default_api_key_tier),
            "identity.default_api_key_tier",
            format!("must name one of identity.api_key_tiers ({:?})", i.api_key_tiers.keys().collect::<Vec<_>>()),
        );
        check(
            (1..=366).contains(&i.api_key_rotation_days),
            "identity.api_key_rotation_days",
            "must be between 1 and 366".into(),
        );
        check(
            i.api_key_overlap_s <= 7 * 24 * 3600,
            "identity.api_key_overlap_s",
            "must be at most 604800 (7 days)".into(),
        );
        check(i.max_rate_buckets >= 1, "identity.max_rate_buckets", "must be at least 1".into());
        check(
            i.api_key_expiry_warning_days <= 366,
            "identity.api_key_expiry_warning_days",
            "must be at most 366".into(),
        );
        check(
            (60..=30 * 86_400).contains(&i.session_absolute_timeout_s),
            "identity.session_absolute_timeout_s",
            "must be between 60 and 2592000 (30 days)".into(),
        );
        check(
            i.session_idle_timeout_s >= 60 && i.session_idle_timeout_s <= i.session_absolute_timeout_s,
            "identity.session_idle_timeout_s",
            "must be at least 60 and at most identity.session_absolute_timeout_s".into(),
        );
        check(
            (1..=100).contains(&i.max_sessions_per_user),
            "identity.max_sessions_per_user",
            "must be between 1 and 100".into(),
        );
        check(
            (10..=3600).contains(&i.login_timeout_s),
            "identity.login_timeout_s",
            "must be between 10 and 3600".into(),
        );
        if let Some(oidc) = &i.oidc {
            check(
                oidc.issuer.starts_with("https://") || oidc.issuer.starts_with("http://"),
                "identity.oidc.issuer",
                "must be an http(s) URL".into(),
            );
            check(!oidc.client_id.is_empty(), "identity.oidc.client_id", "must not be empty".into());
        }
        check(
            i.public_url.as_deref().is_none_or(|u| u.starts_with("https://")),
            "identity.public_url",
            "must be an https URL".into(),
        );
        check(!i.token_issuer.is_empty(), "identity.token_issuer", "must not be empty".into());
        check(!i.token_audience.is_empty(), "identity.token_audience", "must not be empty".into());
        check((10..=86_400).contains(&i.token_ttl_s), "identity.token_ttl_s", "must be between 10 and 86400".into());
        check(i.token_clock_skew_s <= 300, "identity.token_clock_skew_s", "must be at most 300".into());
        check(
            (1..=366).contains(&i.signing_key_rotation_days),
            "identity.signing_key_rotation_days",
            "must be between 1 and 366".into(),
        );
        check(
            i.signing_key_publish_ahead_s + i.token_ttl_s + i.token_clock_skew_s < i.signing_key_rotation_days * 86_400,
            "identity.signing_key_publish_ahead_s",
            "publish-ahead time, token lifetime and clock skew together must be shorter than the rotation period"
                .into(),
        );
    }

    fn validate_telemetry(&self, check: &mut impl FnMut(bool, &str, String)) {
        let o = &self.telemetry.otlp;
        if let Some(endpoint) = &o.endpoint {
            let scheme = endpoint.split_once("://").map(|(scheme, rest)| (scheme, !rest.is_empty()));
            check(
                matches!(scheme, Some(("http" | "https", true))),
                "telemetry.otlp.endpoint",
                "must be an http:// or https:// URL of the collector's traces path".into(),
            );
        }
        let https = o.endpoint.as_deref().is_some_and(|e| e.starts_with("https://"));
        check(
            o.ca_file.is_some() == https,
            "telemetry.otlp.ca_file",
            match https {
                true => "is required with an https:// endpoint: the CAs trusted for the collector".into(),
                false => "is only used with an https:// endpoint".into(),
            },
        );
        for (name, value) in &o.headers {
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            check(valid, &format!("telemetry.otlp.headers.{name}"), "is not a valid HTTP header".into());
        }
        check(
            (0.0..=1.0).contains(&o.sample_ratio),
            "telemetry.otlp.sample_ratio",
            "must be between 0.0 and 1.0".into(),
        );
        check(
            (1..=1_000_000).contains(&o.max_queue_spans),
            "telemetry.otlp.max_queue_spans",
            "must be between 1 and 1000000".into(),
        );
        check(
            (1..=o.max_queue_spans.max(1)).contains(&o.max_export_batch),
            "telemetry.otlp.max_export_batch",
            "must be between 1 and telemetry.otlp.max_queue_spans".into(),
        );
        check(
            (10..=60_000).contains(&o.export_interval_ms),
            "telemetry.otlp.export_interval_ms",
            "must be between 10 and 60000".into(),
        );
        check(
            (100..=120_000).contains(&o.timeout_ms),
            "telemetry.otlp.timeout_ms",
            "must be between 100 and 120000".into(),
        );
    }

    fn validate_audit(&self, check: &mut impl FnMut(bool, &str, String)) {
        use crate::{AuditSinkKind, KafkaSecurityProtocol, KafkaTopicLayout};
        let a = &self.audit;
        for (tenant, mode) in &a.tenant_modes {
            let path = format!("audit.tenant_modes.{tenant}");
            let label = !tenant.is_empty()
                && tenant.len() <= 63
                && tenant.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !tenant.starts_with('-')
                && !tenant.ends_with('-');
            check(label, &path, "is not a tenant id (1 to 63 of a-z, 0-9 and '-')".into());
            check(
                *mode != crate::AuditModeConfig::Off,
                &path,
                "\"off\" is a deployment-wide setting for benchmarks only, not a tenant exception".into(),
            );
        }
        check(
            (1..=65_536).contains(&a.max_batch_events),
            "audit.max_batch_events",
            "must be between 1 and 65536".into(),
        );
        check(
            a.queue_events >= a.max_batch_events,
            "audit.queue_events",
            format!("must be at least audit.max_batch_events ({})", a.max_batch_events),
        );
        check(
            a.max_outbox_events >= a.max_batch_events as u64,
            "audit.max_outbox_events",
            format!("must be at least audit.max_batch_events ({})", a.max_batch_events),
        );
        check(a.ship_backoff_min_ms >= 1, "audit.ship_backoff_min_ms", "must be at least 1".into());
        check(
            a.ship_backoff_max_ms >= a.ship_backoff_min_ms,
            "audit.ship_backoff_max_ms",
            format!("must be at least audit.ship_backoff_min_ms ({})", a.ship_backoff_min_ms),
        );
        check(a.ship_linger_ms <= 1_000, "audit.ship_linger_ms", "must be at most 1000".into());
        check(
            (1..=64).contains(&a.ship_max_batches_in_flight),
            "audit.ship_max_batches_in_flight",
            "must be between 1 and 64".into(),
        );
        check(
            (100..=3_600_000).contains(&a.ship_stalled_after_ms),
            "audit.ship_stalled_after_ms",
            "must be between 100 and 3600000".into(),
        );
        check(a.ship_stop_grace_ms <= 600_000, "audit.ship_stop_grace_ms", "must be at most 600000".into());
        check(a.commit_linger_us <= 10_000, "audit.commit_linger_us", "must be at most 10000".into());
        check(a.commit_gather_us <= 10_000, "audit.commit_gather_us", "must be at most 10000".into());
        check(
            (1..=60_000).contains(&a.carried_record_interval_ms),
            "audit.carried_record_interval_ms",
            "must be between 1 and 60000".into(),
        );
        check(a.local.segment_bytes >= 4096, "audit.local.segment_bytes", "must be at least 4096".into());
        check(a.local.retention_ms >= 60_000, "audit.local.retention_ms", "must be at least 60000".into());
        check(a.local.sync_interval_ms <= 10_000, "audit.local.sync_interval_ms", "must be at most 10000".into());
        check(
            a.local.max_bytes_per_tenant >= 2 * a.local.segment_bytes,
            "audit.local.max_bytes_per_tenant",
            "must be at least two segments (2 × audit.local.segment_bytes)".into(),
        );
        if a.sink != AuditSinkKind::Kafka {
            return;
        }
        let k = &a.kafka;
        check(!k.brokers.trim().is_empty(), "audit.kafka.brokers", "is required when audit.sink is \"kafka\"".into());
        // Kafka topic names: at most 249 of [a-zA-Z0-9._-]; a tenant id adds up to 63.
        let legal = |name: &str| name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        match k.topic_layout {
            KafkaTopicLayout::Shared => check(
                !k.topic.is_empty() && k.topic.len() <= 249 && legal(&k.topic),
                "audit.kafka.topic",
                "must be 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-'".into(),
            ),
            KafkaTopicLayout::PerTenant => check(
                k.topic_prefix.len() <= 249 - 63 && legal(&k.topic_prefix),
                "audit.kafka.topic_prefix",
                "must be at most 186 of a-z, A-Z, 0-9, '.', '_' and '-' (a tenant id follows it)".into(),
            ),
        }
        check((1..=10_000).contains(&k.partitions), "audit.kafka.partitions", "must be between 1 and 10000".into());
        check(
            (1..=16).contains(&k.replication_factor),
            "audit.kafka.replication_factor",
            "must be between 1 and 16".into(),
        );
        check(
            k.retention_ms == -1 || k.retention_ms >= 60_000,
            "audit.kafka.retention_ms",
            "must be -1 (keep forever) or at least 60000".into(),
        );
        check(
            (1000..=600_000).contains(&k.request_timeout_ms),
            "audit.kafka.request_timeout_ms",
            "must be between 1000 and 600000".into(),
        );
        // Every batch the shipper has on its way must fit in the producer's queue.
        let shipped = a.max_batch_events.saturating_mul(a.ship_max_batches_in_flight);
        check(
            k.max_in_flight >= shipped && k.max_in_flight <= 10_000_000,
            "audit.kafka.max_in_flight",
            format!(
                "must be between audit.max_batch_events × audit.ship_max_batches_in_flight ({shipped}) and 10000000"
            ),
        );
        let tls = matches!(k.security_protocol, KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl);
        let sasl = matches!(k.security_protocol, KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl);
        for (path, file) in [
            ("audit.kafka.ca_file", &k.ca_file),
            ("audit.kafka.cert_file", &k.cert_file),
            ("audit.kafka.key_file", &k.key_file),
        ] {
            if let Some(file) = file {
                check(tls, path, "is only used with security_protocol \"ssl\" or \"sasl-ssl\"".into());
                check(file.is_file(), path, format!("file {} does not exist", file.display()));
            }
        }
        check(
            k.cert_file.is_some() == k.key_file.is_some(),
            "audit.kafka.cert_file",
            "cert_file and key_file go together".into(),
        );
        if sasl {
            check(k.sasl_username.is_some(), "audit.kafka.sasl_username", "is required with SASL".into());
            check(
                k.sasl_password_file.is_some() != k.sasl_password_env.is_some(),
                "audit.kafka",
                "SASL needs exactly one of sasl_password_file and sasl_password_env".into(),
            );
        } else {
            check(
                k.sasl_username.is_none() && k.sasl_password_file.is_none() && k.sasl_password_env.is_none(),
                "audit.kafka.sasl_username",
                "SASL settings need security_protocol \"sasl-plaintext\" or \"sasl-ssl\"".into(),
            );
        }
    }

    /// True when a master key source is configured.
    pub fn has_master_key(&self) -> bool {
        let c = &self.custody;
        c.master_key_file.is_some() || c.master_key_env.is_some() || c.master_key_command.is_some()
    }

    /// True when the TLS files are configured; otherwise only `custos dev` can run the node.
    pub fn has_tls_files(&self) -> bool {
        self.tls.ca_file.is_some() && self.tls.cert_file.is_some() && self.tls.key_file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn defaults_are_valid() {
        // The built-in defaults must run `custos dev` without a file.
        assert_eq!(Config::default().validate(), vec![]);
    }

    #[test]
    fn idle_tenant_actors_stop_only_once_their_cached_keys_have_expired() {
        let mut config = Config::default();
        config.actors.idle_stop_ms = config.custody.key_cache_ttl_ms - 1;
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["actors.idle_stop_ms"]);
        config.actors.idle_stop_ms = config.custody.key_cache_ttl_ms;
        assert_eq!(config.validate(), vec![]);
    }

    #[test]
    fn a_kafka_sink_needs_brokers_and_consistent_security_settings() {
        let mut config = Config::default();
        config.audit.sink = crate::AuditSinkKind::Kafka;
        config.audit.kafka.sasl_username = Some("custos".into());
        config.audit.kafka.topic = "bad topic".into();
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["audit.kafka.brokers", "audit.kafka.topic", "audit.kafka.sasl_username"]);

        config.audit.kafka.brokers = "127.0.0.1:9092".into();
        config.audit.kafka.topic = "custos.audit".into();
        config.audit.kafka.security_protocol = crate::KafkaSecurityProtocol::SaslSsl;
        config.audit.kafka.sasl_password_env = Some("KAFKA_PASSWORD".into());
        assert_eq!(config.validate(), vec![]);

        // The shipper's batches on their way must fit in the producer's queue.
        config.audit.ship_max_batches_in_flight = 8;
        config.audit.kafka.max_in_flight = 8 * config.audit.max_batch_events - 1;
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["audit.kafka.max_in_flight"]);
        config.audit.ship_max_batches_in_flight = 0;
        config.audit.kafka.max_in_flight = 100_000;
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["audit.ship_max_batches_in_flight"]);
        config.audit.ship_max_batches_in_flight = 4;

        // A stall is reported after a positive wait; shutdown and metadata waits are bounded.
        config.audit.ship_stalled_after_ms = 0;
        config.audit.ship_stop_grace_ms = 3_600_000;
        config.audit.kafka.request_timeout_ms = 10;
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec!["audit.ship_stalled_after_ms", "audit.ship_stop_grace_ms", "audit.kafka.request_timeout_ms"]
        );
    }

    #[test]
    fn vault_certificate_pins_are_sha256_digests_and_need_https() {
        let mut config = Config::default();
        config.custody.vault.address = Some("http://127.0.0.1:8200".into());
        config.custody.vault.token_env = Some("VAULT_TOKEN".into());
        let digest = "AB:".repeat(31) + "AB";
        config.custody.vault.server_cert_sha256 = vec![digest.clone(), "ab".repeat(31), "zz".repeat(32)];
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec![
                "custody.vault.server_cert_sha256[1]",
                "custody.vault.server_cert_sha256[2]",
                "custody.vault.server_cert_sha256"
            ]
        );
        config.custody.vault.address = Some("https://vault.example:8200".into());
        config.custody.vault.server_cert_sha256 = vec![digest.clone(), "cd".repeat(32)];
        assert_eq!(config.validate(), vec![]);
        assert_eq!(crate::parse_sha256_fingerprint(&digest), Some([0xab; 32]));
    }

    #[test]
    fn an_otlp_export_needs_a_collector_url_and_sane_bounds() {
        let mut config = Config::default();
        config.telemetry.otlp.endpoint = Some("collector:4318".into());
        config.telemetry.otlp.ca_file = Some("ca.pem".into());
        config.telemetry.otlp.headers.insert("authorization".into(), "Bearer x\n".into());
        config.telemetry.otlp.sample_ratio = 1.5;
        config.telemetry.otlp.max_export_batch = 10_000;
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec![
                "telemetry.otlp.endpoint",
                "telemetry.otlp.ca_file",
                "telemetry.otlp.headers.authorization",
                "telemetry.otlp.sample_ratio",
                "telemetry.otlp.max_export_batch",
            ]
        );
        config.telemetry.otlp.endpoint = Some("https://otel.example:4318/v1/traces".into());
        config.telemetry.otlp.ca_file = None;
        assert_eq!(config.validate()[0].path, "telemetry.otlp.ca_file");
        config.telemetry.otlp.ca_file = Some("ca.pem".into());
        config.telemetry.otlp.headers.insert("authorization".into(), "Bearer x".into());
        config.telemetry.otlp.sample_ratio = 0.25;
        config.telemetry.otlp.max_export_batch = 512;
        assert_eq!(config.validate(), vec![]);
    }

    #[test]
    fn tenant_audit_modes_name_tenants_and_never_turn_audit_off() {
        let mut config = Config::default();
        config.audit.tenant_modes.insert("acme".into(), crate::AuditModeConfig::BestEffort);
        assert_eq!(config.validate(), vec![]);
        config.audit.tenant_modes.insert("Bad Id".into(), crate::AuditModeConfig::FailClosed);
        config.audit.tenant_modes.insert("globex".into(), crate::AuditModeConfig::Off);
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["audit.tenant_modes.Bad Id", "audit.tenant_modes.globex"]);
    }
}
