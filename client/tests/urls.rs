//! Broker URLs through the crate's public API: the forms users copy from ActiveMQ and fabric8
//! documentation, the helpers the failover transport and `mq-client` use, and a property test that
//! `Display` gives back a URL parsing to the same value for any URL the types can hold.

use std::time::Duration;

use fabricmq_client::{BrokerUrl, ClientError, FailoverOptions, UrlError};
use proptest::prelude::*;

fn tcp(host: &str, port: u16) -> BrokerUrl {
    BrokerUrl::Tcp {
        host: host.to_owned(),
        port,
        tls: false,
    }
}

#[test]
fn activemq_and_fabric8_examples_parse() {
    // ActiveMQ's failover transport documentation.
    let url: BrokerUrl =
        "failover:(tcp://localhost:61616,tcp://remotehost:61616)?initialReconnectDelay=100"
            .parse()
            .unwrap();
    assert_eq!(
        url,
        BrokerUrl::Failover {
            urls: vec![tcp("localhost", 61616), tcp("remotehost", 61616)],
            options: FailoverOptions {
                initial_reconnect_delay: Duration::from_millis(100),
                ..FailoverOptions::default()
            },
        }
    );
    let url: BrokerUrl = "failover:(tcp://primary:61616)?timeout=3000&maxReconnectAttempts=0"
        .parse()
        .unwrap();
    let options = url.options().unwrap();
    assert_eq!(options.timeout, Some(Duration::from_millis(3000)));
    assert_eq!(options.max_reconnect_attempts, Some(0));
    // fabric8's mq-client spelling, and the one fabricmq prints.
    for input in ["discovery:(fabric:default)", "discovery:fabric:default"] {
        let url: BrokerUrl = input.parse().unwrap();
        assert_eq!(url.to_string(), "discovery:fabric:default");
        assert!(url.is_failover());
    }
}

#[test]
fn zk_from_the_command_line_or_environment() {
    // `mq-client --brokerUrl discovery:fabric:default --zk zk1:2181` (or FABRIC_ZK).
    let url: BrokerUrl = "discovery:fabric:default".parse().unwrap();
    let url = url.with_default_zk(Some("zk1:2181,zk2:2181"));
    assert_eq!(
        url,
        BrokerUrl::Discovery {
            group: "default".into(),
            zk: Some("zk1:2181,zk2:2181".into()),
            zk_root: None,
            options: FailoverOptions::default(),
        }
    );
    assert_eq!(
        url.to_string(),
        "discovery:fabric:default?zk=zk1:2181,zk2:2181"
    );
}

#[test]
fn url_errors_convert_to_client_errors_and_keep_their_message() {
    let err = "failover:(tcp://a:1)?maxReconnectDelay=forever"
        .parse::<BrokerUrl>()
        .unwrap_err();
    let client: ClientError = err.clone().into();
    assert_eq!(client.to_string(), err.to_string());
    assert!(
        client.to_string().contains("`maxReconnectDelay`"),
        "{client}"
    );
    assert!(matches!(
        "discovery:fabric:".parse::<BrokerUrl>(),
        Err(UrlError::EmptyGroup { .. })
    ));
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z0-9]{1,5}){0,2}",
        any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
        any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
    ]
}

fn tcp_url() -> impl Strategy<Value = BrokerUrl> {
    (host(), 1u16.., any::<bool>()).prop_map(|(host, port, tls)| BrokerUrl::Tcp { host, port, tls })
}

fn options() -> impl Strategy<Value = FailoverOptions> {
    (
        (0u64..100_000, 0u64..1_000_000),
        any::<bool>(),
        prop_oneof![Just(2.0f64), Just(1.0), 1.0f64..100.0],
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::option::of(0u64..10_000_000),
    )
        .prop_map(
            |((initial, extra), exp, mult, max_attempts, startup, randomize, timeout)| {
                FailoverOptions {
                    initial_reconnect_delay: Duration::from_millis(initial),
                    max_reconnect_delay: Duration::from_millis(initial + extra),
                    use_exponential_back_off: exp,
                    back_off_multiplier: mult,
                    max_reconnect_attempts: max_attempts,
                    startup_max_reconnect_attempts: startup,
                    randomize,
                    timeout: timeout.map(Duration::from_millis),
                }
            },
        )
}

fn zk() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec((host(), 1u16..), 1..4),
        // Chroot segments as ZooKeeper accepts them (the parser trims surrounding whitespace, so
        // a segment of spaces is not a valid value to round-trip); `%&#()=` exercise the encoding.
        proptest::option::of(
            "(/[a-zA-Z0-9_%&#()=-][a-zA-Z0-9 _%&#()=-]{0,6}[a-zA-Z0-9_%&#()=-]){1,2}",
        ),
    )
        .prop_map(|(servers, chroot)| {
            let servers: Vec<String> = servers
                .into_iter()
                .map(|(h, p)| {
                    if h.contains(':') {
                        format!("[{h}]:{p}")
                    } else {
                        format!("{h}:{p}")
                    }
                })
                .collect();
            format!("{}{}", servers.join(","), chroot.unwrap_or_default())
        })
}

fn any_url() -> impl Strategy<Value = BrokerUrl> {
    prop_oneof![
        tcp_url(),
        (proptest::collection::vec(tcp_url(), 1..5), options())
            .prop_map(|(urls, options)| BrokerUrl::Failover { urls, options }),
        (
            "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}",
            proptest::option::of(zk()),
            proptest::option::of("(/[a-z0-9_.-]{0,6}[a-z0-9_-]){1,3}"),
            options()
        )
            .prop_map(|(group, zk, zk_root, options)| BrokerUrl::Discovery {
                group,
                zk,
                zk_root,
                options
            }),
    ]
}

proptest! {
    #[test]
    fn display_parses_back_to_the_same_url(url in any_url()) {
        let printed = url.to_string();
        prop_assert_eq!(printed.parse::<BrokerUrl>(), Ok(url.clone()), "printed as {}", printed);
        // Only non-default options are printed.
        if url.options() == Some(&FailoverOptions::default()) {
            prop_assert!(!printed.contains("Reconnect"), "{}", printed);
        }
    }

    #[test]
    fn parsing_never_panics(input in "\\PC{0,60}") {
        let _ = input.parse::<BrokerUrl>();
    }

    #[test]
    fn parsing_failover_like_input_never_panics(
        input in "(failover|discovery):[(]?[a-z:/,.0-9()?&=%-]{0,40}"
    ) {
        if let Ok(url) = input.parse::<BrokerUrl>() {
            prop_assert_eq!(url.to_string().parse::<BrokerUrl>(), Ok(url));
        }
    }
}
