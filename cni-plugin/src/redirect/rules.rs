//! The in-pod rules (docs/WIRE.md §5.4), one line per rule, each in both syntaxes: the
//! iptables flavour and the nftables flavour install the same list, in the same order.

/// Where a rule goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Mangle,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Prerouting,
    Output,
}

pub(crate) struct Rule {
    pub table: Table,
    pub hook: Hook,
    /// The rule's matches and target, as `iptables -A <chain>` takes them.
    pub iptables: &'static str,
    /// The same rule as an nft statement.
    pub nft: &'static str,
}

const fn rule(table: Table, hook: Hook, iptables: &'static str, nft: &'static str) -> Rule {
    Rule {
        table,
        hook,
        iptables,
        nft,
    }
}

use Hook::{Output, Prerouting};
use Table::{Mangle, Nat};

/// ztunnel's sockets carry mark 0x539 (1337); its connections with a spoofed source get the
/// connection mark 0x111, which routes the app's replies back to it (table 100, see
/// `super::POLICY_ROUTING`). 169.254.7.127 is where the node's probes come from (§5.5).
pub(crate) const RULES: &[Rule] = &[
    // A packet of ztunnel's (spoofed source, looping over lo into the pod) marks its
    // connection...
    rule(
        Mangle,
        Prerouting,
        "-m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
        "meta mark & 0x00000fff == 0x00000539 ct mark set ct mark & 0xfffff000 | 0x00000111",
    ),
    // ...and the app's replies on that connection carry the mark, so they route to ztunnel.
    rule(
        Mangle,
        Output,
        "-m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
        "ct mark & 0x00000fff == 0x00000111 meta mark set ct mark",
    ),
    // Outbound: ztunnel's own traffic passes.
    rule(
        Nat,
        Output,
        "-m mark --mark 0x539/0xfff -j RETURN",
        "meta mark & 0x00000fff == 0x00000539 return",
    ),
    // Replies to the node's probes are not captured.
    rule(
        Nat,
        Output,
        "-p tcp -d 169.254.7.127 -j RETURN",
        "ip daddr 169.254.7.127 meta l4proto tcp return",
    ),
    // DNS over UDP, except over loopback, to the DNS proxy.
    rule(
        Nat,
        Output,
        "-p udp --dport 53 ! -o lo -j REDIRECT --to-ports 15053",
        "udp dport 53 oifname != \"lo\" redirect to :15053",
    ),
    // Loopback destinations pass.
    rule(
        Nat,
        Output,
        "-d 127.0.0.1/32 -j RETURN",
        "ip daddr 127.0.0.1 return",
    ),
    // DNS over TCP to the DNS proxy.
    rule(
        Nat,
        Output,
        "-p tcp --dport 53 -j REDIRECT --to-ports 15053",
        "tcp dport 53 redirect to :15053",
    ),
    // The app to its own pod address (through lo) passes.
    rule(
        Nat,
        Output,
        "-p tcp -o lo -j RETURN",
        "oifname \"lo\" meta l4proto tcp return",
    ),
    // Every other outbound TCP connection to ztunnel's outbound listener.
    rule(
        Nat,
        Output,
        "-p tcp -j REDIRECT --to-ports 15001",
        "meta l4proto tcp redirect to :15001",
    ),
    // Inbound: the node's probes reach the app directly.
    rule(
        Nat,
        Prerouting,
        "-p tcp -s 169.254.7.127 -j RETURN",
        "ip saddr 169.254.7.127 meta l4proto tcp return",
    ),
    // HBONE arrives on 15008 itself.
    rule(
        Nat,
        Prerouting,
        "-p tcp --dport 15008 -j RETURN",
        "tcp dport 15008 return",
    ),
    // Every other inbound TCP connection to ztunnel's plaintext listener.
    rule(
        Nat,
        Prerouting,
        "-p tcp -j REDIRECT --to-ports 15006",
        "meta l4proto tcp redirect to :15006",
    ),
];

/// The iptables chain of a hook.
pub(crate) fn iptables_chain(hook: Hook) -> &'static str {
    match hook {
        Prerouting => "KEELSON_PRERT",
        Output => "KEELSON_OUTPUT",
    }
}

fn iptables_table(table: Table) -> &'static str {
    match table {
        Mangle => "mangle",
        Nat => "nat",
    }
}

fn builtin(hook: Hook) -> &'static str {
    match hook {
        Prerouting => "PREROUTING",
        Output => "OUTPUT",
    }
}

const TABLES: [Table; 2] = [Mangle, Nat];
const HOOKS: [Hook; 2] = [Prerouting, Output];

/// The whole set for `iptables-restore --noflush`: per table, the two chains (created, or
/// emptied if there), the jumps to them, then the rules.
pub(crate) fn iptables_restore() -> String {
    let mut out = String::new();
    for table in TABLES {
        out.push_str(&format!("*{}\n", iptables_table(table)));
        for hook in HOOKS {
            out.push_str(&format!(":{} - [0:0]\n", iptables_chain(hook)));
        }
        for hook in HOOKS {
            out.push_str(&format!(
                "-A {} -j {}\n",
                builtin(hook),
                iptables_chain(hook)
            ));
        }
        for r in RULES.iter().filter(|r| r.table == table) {
            out.push_str(&format!("-A {} {}\n", iptables_chain(r.hook), r.iptables));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Undoes [`iptables_restore`]: the jumps deleted, then the chains emptied and deleted.
pub(crate) fn iptables_removal() -> String {
    let mut out = String::new();
    for table in TABLES {
        out.push_str(&format!("*{}\n", iptables_table(table)));
        for hook in HOOKS {
            out.push_str(&format!(
                "-D {} -j {}\n",
                builtin(hook),
                iptables_chain(hook)
            ));
        }
        for hook in HOOKS {
            let chain = iptables_chain(hook);
            out.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

pub(crate) const NFT_MANGLE: &str = "keelson-ambient-mangle";
pub(crate) const NFT_NAT: &str = "keelson-ambient-nat";

/// The whole set for one `nft -f` transaction.
pub(crate) fn nft_ruleset() -> String {
    let mut out = String::new();
    for table in TABLES {
        let name = match table {
            Mangle => NFT_MANGLE,
            Nat => NFT_NAT,
        };
        out.push_str(&format!("table inet {name} {{\n"));
        for hook in HOOKS {
            let base = match (table, hook) {
                (Mangle, Prerouting) => "type filter hook prerouting priority mangle",
                (Mangle, Output) => "type route hook output priority mangle",
                (Nat, Prerouting) => "type nat hook prerouting priority dstnat",
                (Nat, Output) => "type nat hook output priority -100",
            };
            let chain = match hook {
                Prerouting => "prerouting",
                Output => "output",
            };
            out.push_str(&format!("  chain {chain} {{\n    {base}; policy accept;\n"));
            for r in RULES.iter().filter(|r| r.table == table && r.hook == hook) {
                out.push_str(&format!("    {}\n", r.nft));
            }
            out.push_str("  }\n");
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_flavours_have_every_rule_in_the_same_order() {
        let ipt = iptables_restore();
        let nft = nft_ruleset();
        let mut last = (0, 0);
        for r in RULES {
            let i = ipt.find(r.iptables).expect(r.iptables);
            let n = nft.find(r.nft).expect(r.nft);
            if r.table == Nat && r.hook == Output {
                assert!(i > last.0 && n > last.1, "order of {}", r.iptables);
                last = (i, n);
            }
        }
        assert_eq!(ipt.matches("COMMIT").count(), 2);
        assert!(iptables_removal().contains("-X KEELSON_OUTPUT"));
    }
}
