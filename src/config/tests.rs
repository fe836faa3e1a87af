//! The config's parser, refusals and printed form; the service sections' own keys in `tests/services.rs`,
//! the table and the docs it drives in `tests/docs.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use super::*;
use hvproto::service::guestinfo::GuestInfoSettings;
use hvproto::service::timesync::{Mode, TimeSyncSettings};
use hvtransport::address::CID_ANY;

mod docs;
mod services;

/// The `[timesync]` settings of a parsed config.
fn timesync_of(config: &Config) -> TimeSyncSettings {
    match &config.services[1].settings {
        ServiceSettings::TimeSync(settings) => settings.clone(),
        other => panic!("the second service has {other:?}, not time-sync settings"),
    }
}

fn parse_text(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("test.toml"))
}

fn error_text(text: &str) -> String {
    parse_text(text).unwrap_err().to_string()
}

#[test]
fn empty_file_gives_the_defaults() {
    let config = parse_text("").unwrap();
    assert_eq!(config, Config::default());
    let heartbeat = config.enabled().next().unwrap();
    assert_eq!(heartbeat.kind(), ServiceKind::Heartbeat);
    assert_eq!(
        heartbeat.endpoint,
        Endpoint::Connect("vsock:host:0x48560001".parse().unwrap())
    );
    let enabled: Vec<ServiceKind> = config.enabled().map(ServiceConfig::kind).collect();
    assert_eq!(
        enabled,
        [
            ServiceKind::Heartbeat,
            ServiceKind::TimeSync,
            ServiceKind::Shutdown,
            ServiceKind::GuestInfo
        ]
    );
    assert_eq!(timesync_of(&config), TimeSyncSettings::default());
    assert_eq!(timesync_of(&config).mode, Mode::Adjust);
}

#[test]
fn timesync_keys_are_applied() {
    let config = parse_text(
        "[timesync]\nmode = \"chrony\"\nstep_threshold = 0.5\nprobe_interval = 0\n\
         chrony_socket = \"/run/c.sock\"\n",
    )
    .unwrap();
    assert_eq!(
        timesync_of(&config),
        TimeSyncSettings {
            mode: Mode::Chrony,
            step_threshold: Duration::from_millis(500),
            probe_interval: Duration::ZERO,
            chrony_socket: PathBuf::from("/run/c.sock"),
        }
    );
    let config = parse_text("[timesync]\nstep_threshold = 2\nprobe_interval = 0.25\n").unwrap();
    assert_eq!(timesync_of(&config).step_threshold, Duration::from_secs(2));
    assert_eq!(
        timesync_of(&config).probe_interval,
        Duration::from_millis(250)
    );
    assert_eq!(parse_text(&config.to_string()).unwrap(), config);
}

#[test]
fn bad_timesync_values_name_the_line_key_and_what_is_accepted() {
    let text = error_text("[timesync]\nmode = \"slew\"\n");
    assert!(text.starts_with("test.toml:2:8: "), "{text}");
    assert!(text.contains("timesync.mode"), "{text}");
    assert!(text.contains("adjust, monitor or chrony"), "{text}");
    let text = error_text("[timesync]\n\nstep_threshold = 0\n");
    assert!(text.starts_with("test.toml:3:"), "{text}");
    assert!(text.contains("timesync.step_threshold"), "{text}");
    let text = error_text("[timesync]\nprobe_interval = 0.01\n");
    assert!(text.contains("timesync.probe_interval"), "{text}");
    assert!(text.contains("0 (probes off)"), "{text}");
    assert!(error_text("[timesync]\nprobe_interval = \"2s\"\n").contains("probe_interval"));
    let text = error_text("[timesync]\nchrony_socket = \"chrony.sock\"\n");
    assert!(text.contains("not an absolute path"), "{text}");
    let text = error_text("[heartbeat]\nmode = \"monitor\"\n");
    assert!(text.contains("mode"), "{text}");
}

#[test]
fn a_full_file_is_applied() {
    let config = parse_text(
        "log_level = \"debug\"\n[heartbeat]\nlisten = \"vsock:any:48560001-facb-11e6-bd58-64006a7986d3\"\n\
         allowed_cids = [2, 5]\n[timesync]\nenabled = false\nconnect = \"unix:/tmp/t\"\n",
    )
    .unwrap();
    assert_eq!(config.log_level, LevelFilter::Debug);
    let heartbeat = &config.services[0];
    assert_eq!(
        heartbeat.endpoint,
        Endpoint::Listen(Address::Vsock {
            cid: CID_ANY,
            port: 0x4856_0001
        })
    );
    assert_eq!(heartbeat.allowed_cids.cids, [2, 5]);
    assert_eq!(
        config.services[1].endpoint,
        Endpoint::Connect(Address::Unix("/tmp/t".into()))
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = error_text("log_level = \"info\"\n[heartbeat]\nconect = \"unix:/x\"\n");
    assert!(text.starts_with("test.toml:3:1: "), "{text}");
    assert!(text.contains("conect"), "{text}");
    assert!(text.contains("connect"), "{text}");
}

#[test]
fn unknown_key_lists_only_the_keys_of_its_own_section() {
    let text = error_text("[heartbeat]\nenabled = true\n[guestinfo]\n\nstat_dir = \"/x\"\n");
    assert!(text.starts_with("test.toml:5:1: "), "{text}");
    assert!(text.contains("key 'guestinfo.stat_dir'"), "{text}");
    let keys = [
        "enabled",
        "connect",
        "listen",
        "allowed_cids",
        "allowed_uids",
        "max_connections",
        "state_dir",
    ];
    for key in keys {
        assert!(text.contains(key), "{key} missing: {text}");
    }
    assert!(!text.contains("poweroff"), "{text}");
    assert!(!text.contains("chrony_socket"), "{text}");
    let text = error_text("[shutdown]\nforce = 1\n");
    assert!(text.contains("force_after"), "{text}");
    assert!(!text.contains("state_dir"), "{text}");
}

#[test]
fn a_key_at_the_top_level_that_belongs_in_a_section_names_it() {
    let text = error_text("mode = \"chrony\"\n[timesync]\n");
    assert!(text.starts_with("test.toml:1:8: "), "{text}");
    assert!(
        text.contains("key 'mode': mode is a setting of the [timesync] section"),
        "{text}"
    );
    let text = error_text("enabled = false\n");
    assert!(text.contains("each service's section"), "{text}");
    let text = error_text("[heartbeat]\nidle_timeout = 5\n");
    assert!(
        text.contains("idle_timeout is a setting of the top level"),
        "{text}"
    );
}

#[test]
fn an_unknown_top_level_key_lists_the_top_level_keys_and_the_sections() {
    let text = error_text("log_level = \"info\"\nloglevel = \"debug\"\n");
    assert!(
        text.starts_with("test.toml:2:1: key 'loglevel': "),
        "{text}"
    );
    assert!(
        text.contains(
            "unknown key 'loglevel'; the top level takes log_level, idle_timeout, redial_min, redial_max \
             and the sections [heartbeat], [timesync], [shutdown], [guestinfo]"
        ),
        "{text}"
    );
}

#[test]
fn unknown_section_is_refused() {
    let text = error_text("[hearbeat]\nenabled = true\n");
    assert!(text.starts_with("test.toml:1:2: "), "{text}");
    assert!(text.contains("unknown section [hearbeat]"), "{text}");
    assert!(text.contains("[heartbeat], [timesync]"), "{text}");
    let text = error_text("heartbeat = 1\n");
    assert!(text.starts_with("test.toml:1:"), "{text}");
    assert!(text.contains("key 'heartbeat'"), "{text}");
}

#[test]
fn bad_address_names_the_line_key_and_accepted_forms() {
    let text = error_text("\n[heartbeat]\nconnect = \"tcp:1:2\"\n");
    assert!(text.starts_with("test.toml:3:11: "), "{text}");
    assert!(text.contains("heartbeat.connect"), "{text}");
    assert!(text.contains("vsock:CID:PORT"), "{text}");
}

#[test]
fn non_template_guid_is_refused_naming_the_template() {
    let text =
        error_text("[heartbeat]\nconnect = \"vsock:host:999E53D4-3D5C-4C3E-8779-BED06EC056E1\"\n");
    assert!(text.contains("test.toml:2:"), "{text}");
    assert!(text.contains("facb-11e6-bd58-64006a7986d3"), "{text}");
}

#[test]
fn wrong_types_and_values_are_refused_with_the_key() {
    let text = error_text("[heartbeat]\nenabled = \"yes\"\n");
    assert!(text.starts_with("test.toml:2:"), "{text}");
    assert!(text.contains("heartbeat.enabled"), "{text}");
    let text = error_text("log_level = \"loud\"\n");
    assert!(text.starts_with("test.toml:1:13: "), "{text}");
    assert!(
        text.contains("off, error, warn, info, debug or trace"),
        "{text}"
    );
}

#[test]
fn connect_and_listen_together_are_refused() {
    let text = error_text("[heartbeat]\nconnect = \"unix:/a\"\nlisten = \"unix:/b\"\n");
    assert!(text.starts_with("test.toml:3:"), "{text}");
    assert!(text.contains("either connects or listens"), "{text}");
}

#[test]
fn connect_to_any_and_hybrid_addresses_are_refused() {
    assert!(error_text("[heartbeat]\nconnect = \"vsock:any:5\"\n").contains("CID any"));
    assert!(error_text("[heartbeat]\nlisten = \"hybrid:/x:5\"\n").contains("hvhost"));
}

#[test]
fn limits_apply_to_every_service_and_are_checked() {
    let config = parse_text(
        "idle_timeout = 0.5\nredial_min = 0.01\nredial_max = 2\n[heartbeat]\nmax_connections = 3\n",
    )
    .unwrap();
    for service in &config.services {
        assert_eq!(service.limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(service.limits.redial_min, Duration::from_millis(10));
        assert_eq!(service.limits.redial_max, Duration::from_secs(2));
    }
    assert_eq!(config.services[0].max_connections, 3);
    assert_eq!(config.services[1].max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(parse_text(&config.to_string()).unwrap(), config);
    let text = error_text("idle_timeout = 0\n");
    assert!(text.starts_with("test.toml:1:"), "{text}");
    assert!(text.contains("idle_timeout"), "{text}");
    assert!(error_text("redial_min = 5\nredial_max = 1\n").contains("redial_max"));
    let text = error_text("[heartbeat]\nmax_connections = 0\n");
    assert!(text.contains("heartbeat.max_connections"), "{text}");
}

#[test]
fn printed_strings_are_escaped_and_parse_back() {
    let config = parse_text(
        "[heartbeat]\nlisten = \"unix:/tmp/a\\\"b\\\\c.sock\"\nhealth = \"command\"\n\
         health_command = [\"/bin/sh\", \"-c\", \"echo \\\"ok\\\" \\\\ done\\u0001\\t\"]\n\
         [timesync]\nconnect = 'unix:C:\\x\\y'\nchrony_socket = \"/run/\\\"c\\\"\\n.sock\"\n\
         [shutdown]\npoweroff = [\"/sbin/halt\", \"--why=\\\"host\\\"\"]\n\
         [guestinfo]\nstate_dir = \"/var/lib/hv\\\"agent\\u007f\"\n",
    )
    .unwrap();
    assert_eq!(
        config.services[0].endpoint,
        Endpoint::Listen(Address::Unix("/tmp/a\"b\\c.sock".into()))
    );
    assert_eq!(
        config.services[3].settings,
        ServiceSettings::GuestInfo(GuestInfoSettings {
            state_dir: "/var/lib/hv\"agent\u{7f}".into(),
            ..GuestInfoSettings::default()
        })
    );
    let printed = config.to_string();
    assert!(
        printed.contains(r#"listen = "unix:/tmp/a\"b\\c.sock""#),
        "{printed}"
    );
    assert!(
        printed.contains(r#"state_dir = "/var/lib/hv\"agent\u007F""#),
        "{printed}"
    );
    assert_eq!(parse_text(&printed).unwrap(), config, "{printed}");
}

#[test]
fn syntax_errors_carry_a_position() {
    let text = error_text("[heartbeat\n");
    assert!(text.starts_with("test.toml:1:"), "{text}");
}

#[test]
fn missing_explicit_file_is_an_error_and_printed_config_parses_back() {
    assert!(matches!(
        load(Some(Path::new("/nonexistent/hvagent.toml"))),
        Err(ConfigError::Read { .. })
    ));
    let config = parse_text("[heartbeat]\nlisten = \"unix:/tmp/hb\"\n").unwrap();
    assert_eq!(parse_text(&config.to_string()).unwrap(), config);
}
