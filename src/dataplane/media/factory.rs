//! The peer factory: `spec.webrtc` translated into what every answering peer connection needs.

use std::net::{IpAddr, SocketAddr};

use crate::crd::{FieldError, WebRtcSettings};

/// What the factory advertises and hands to clients.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerFactoryConfig {
    /// Host candidate addresses, each with `udp_port`. NAT 1:1 IPs win over `publicIP`.
    pub advertised_ips: Vec<IpAddr>,
    pub udp_port: u16,
    pub ice_servers: Vec<IceServer>,
    /// Offer a passive ICE-TCP candidate at the address each WHEP request was sent to.
    pub ice_tcp: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

impl PeerFactoryConfig {
    pub fn candidate_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.advertised_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.udp_port))
    }
}

/// Translates the resource's WebRTC settings. `fallback_ips` are advertised only when the
/// resource names no public or NAT 1:1 address (the bound or interface addresses).
/// Every NAT 1:1 IP is advertised (the original design used only the first).
pub fn translate(
    settings: &WebRtcSettings,
    fallback_ips: &[IpAddr],
) -> Result<PeerFactoryConfig, FieldError> {
    let nat_ips = settings
        .nat_1to1_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| parse_ip(ip, &format!("spec.webrtc.nat1To1IPs[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let public_ip = settings
        .public_ip
        .as_deref()
        .map(|ip| parse_ip(ip, "spec.webrtc.publicIP"))
        .transpose()?;
    let advertised_ips = if !nat_ips.is_empty() {
        dedup(nat_ips)
    } else if let Some(ip) = public_ip {
        vec![ip]
    } else {
        dedup(fallback_ips.to_vec())
    };
    let udp_port = Some(settings.udp_port)
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError {
            path: "spec.webrtc.udpPort".into(),
            message: format!("{} is out of range 1..65535", settings.udp_port),
        })?;
    let ice_servers = settings
        .ice_servers
        .iter()
        .map(|s| IceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect();
    Ok(PeerFactoryConfig {
        advertised_ips,
        udp_port,
        ice_servers,
        ice_tcp: settings.ice_tcp,
    })
}

fn parse_ip(text: &str, path: &str) -> Result<IpAddr, FieldError> {
    text.trim().parse().map_err(|_| FieldError {
        path: path.into(),
        message: format!("{text} is not an IP address"),
    })
}

fn dedup(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(public: Option<&str>, nat: &[&str]) -> WebRtcSettings {
        WebRtcSettings {
            public_ip: public.map(str::to_owned),
            nat_1to1_ips: nat.iter().map(|s| s.to_string()).collect(),
            udp_port: 8189,
            ..Default::default()
        }
    }

    const LOOPBACK: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];

    #[test]
    fn all_nat_ips_win_over_public_ip() {
        let cfg = translate(
            &settings(Some("198.51.100.1"), &["203.0.113.10", "2001:db8::1"]),
            &LOOPBACK,
        )
        .unwrap();
        assert_eq!(
            cfg.advertised_ips,
            vec![
                "203.0.113.10".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(cfg.udp_port, 8189);
    }

    #[test]
    fn public_ip_then_fallback() {
        let cfg = translate(&settings(Some("198.51.100.1"), &[]), &LOOPBACK).unwrap();
        assert_eq!(
            cfg.advertised_ips,
            vec!["198.51.100.1".parse::<IpAddr>().unwrap()]
        );
        let cfg = translate(&settings(None, &[]), &LOOPBACK).unwrap();
        assert_eq!(cfg.advertised_ips, LOOPBACK.to_vec());
    }

    #[test]
    fn invalid_ip_names_the_field() {
        let err =
            translate(&settings(None, &["203.0.113.10", "300.1.2.3"]), &LOOPBACK).unwrap_err();
        assert_eq!(err.path, "spec.webrtc.nat1To1IPs[1]");
        assert!(err.message.contains("300.1.2.3 is not an IP address"));
        let err = translate(&settings(Some("nope"), &[]), &LOOPBACK).unwrap_err();
        assert_eq!(err.path, "spec.webrtc.publicIP");
    }

    #[test]
    fn zero_port_is_refused() {
        let mut s = settings(None, &[]);
        s.udp_port = 0;
        assert_eq!(
            translate(&s, &LOOPBACK).unwrap_err().path,
            "spec.webrtc.udpPort"
        );
    }
}
