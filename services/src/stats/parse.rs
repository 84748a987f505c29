//! Parsing the upstream's responses (shapes in DESIGN.md, "services/").
//!
//! * user list: `{"responses": {"userStats": [{"elements": ["alice", ...]}]}}`;
//! * one user's stats: `{"responses": {"networkStats": [{"date": "2016-08-18", "elements":
//!   {"Kenya (Safaricom)": "USD 12.50", ...}}]}}`, values counts for `metric=count`.
//!
//! A key is `Country (Network)`: the country is the text before `(`, trimmed; the network the
//! text inside the parentheses, trimmed. A money value is `CURRENCY AMOUNT`. An element that
//! does not fit (no parentheses, an empty part, a bad amount, a value of the wrong JSON type) is
//! returned as [`Malformed`] with its raw text; the user's other elements still make rows. A
//! response whose *shape* is wrong (no `responses`, no list) is an error for the whole user.

use serde_json::Value as Json;

use crate::store::{Date, Decimal, Row, Value};

/// One element that could not be turned into a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The element as received (`key: value`, JSON-encoded value), at most 200 characters.
    pub raw: String,
    /// What was wrong with it.
    pub reason: String,
}

fn cut(s: String) -> String {
    if s.chars().count() <= 200 {
        s
    } else {
        s.chars().take(200).collect::<String>() + "…"
    }
}

/// Parses the user list.
pub fn user_list(resp: &Json) -> Result<Vec<String>, String> {
    let stats = resp
        .get("responses")
        .and_then(|r| r.get("userStats"))
        .and_then(|u| u.as_array())
        .ok_or("the response has no responses.userStats list")?;
    let mut users = Vec::new();
    for (i, s) in stats.iter().enumerate() {
        let elements = s
            .get("elements")
            .and_then(|e| e.as_array())
            .ok_or_else(|| format!("responses.userStats[{i}] has no elements list"))?;
        for (j, e) in elements.iter().enumerate() {
            match e.as_str() {
                Some(u) if !u.is_empty() => users.push(u.to_string()),
                _ => {
                    return Err(format!(
                        "responses.userStats[{i}].elements[{j}] is not a user name: {}",
                        cut(e.to_string())
                    ))
                }
            }
        }
    }
    Ok(users)
}

/// Splits `Country (Network)` into `(country, network)`.
pub fn split_key(key: &str) -> Result<(String, String), String> {
    let open = key.find('(').ok_or("no parentheses around the network")?;
    let close = key.rfind(')').ok_or("no closing parenthesis")?;
    if close < open {
        return Err("parentheses out of order".into());
    }
    if !key[close + 1..].trim().is_empty() {
        return Err("text after the closing parenthesis".into());
    }
    let country = key[..open].trim();
    let network = key[open + 1..close].trim();
    if country.is_empty() {
        return Err("no country before the parentheses".into());
    }
    if network.is_empty() {
        return Err("no network inside the parentheses".into());
    }
    if country.len() > 64 || network.len() > 64 {
        return Err("country or network longer than 64 bytes".into());
    }
    Ok((country.to_string(), network.to_string()))
}

/// Parses a money value `CURRENCY AMOUNT` (`USD 12.50`).
pub fn money(v: &Json) -> Result<Value, String> {
    let s = v
        .as_str()
        .ok_or("the value is not a string \"CURRENCY AMOUNT\"")?;
    let mut it = s.split_whitespace();
    let (cur, amt) = match (it.next(), it.next(), it.next()) {
        (Some(c), Some(a), None) => (c, a),
        _ => return Err("the value is not of the form \"CURRENCY AMOUNT\"".into()),
    };
    if !(3..=8).contains(&cur.len()) || !cur.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("{cur:?} is not a currency code"));
    }
    let amount = Decimal::parse(amt)?;
    Ok(Value::Money {
        currency: cur.to_string(),
        amount,
    })
}

/// Parses a count (a non-negative JSON integer, or a string of digits).
pub fn count(v: &Json) -> Result<Value, String> {
    if let Some(n) = v.as_u64() {
        return Ok(Value::Count(n));
    }
    if let Some(s) = v.as_str() {
        if !s.is_empty() && s.len() < 20 && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Value::Count)
                .map_err(|_| "not a count".to_string());
        }
    }
    Err("the value is not a non-negative integer count".into())
}

/// Parses one user's stats for `date`: the rows, and the elements that did not fit.
pub fn user_stats(
    resp: &Json,
    username: &str,
    date: Date,
    is_money: bool,
) -> Result<(Vec<Row>, Vec<Malformed>), String> {
    let stats = resp
        .get("responses")
        .and_then(|r| r.get("networkStats"))
        .and_then(|n| n.as_array())
        .ok_or("the response has no responses.networkStats list")?;
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, entry) in stats.iter().enumerate() {
        if let Some(d) = entry.get("date") {
            let ok = d.as_str().and_then(|s| Date::parse(s).ok()) == Some(date);
            if !ok {
                bad.push(Malformed {
                    raw: cut(format!("networkStats[{i}].date: {d}")),
                    reason: format!("not the date asked for ({date})"),
                });
                continue;
            }
        }
        let elements = match entry.get("elements").and_then(|e| e.as_object()) {
            Some(e) => e,
            None => {
                bad.push(Malformed {
                    raw: cut(format!("networkStats[{i}]: {entry}")),
                    reason: "no elements object".into(),
                });
                continue;
            }
        };
        for (key, v) in elements {
            let parsed = split_key(key).and_then(|(country, network)| {
                let value = if is_money { money(v)? } else { count(v)? };
                Ok(Row {
                    username: username.to_string(),
                    date,
                    network,
                    country,
                    value,
                })
            });
            match parsed {
                Ok(r) => rows.push(r),
                Err(reason) => bad.push(Malformed {
                    raw: cut(format!("{key:?}: {v}")),
                    reason,
                }),
            }
        }
    }
    Ok((rows, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys() {
        assert_eq!(
            split_key("Kenya (Safaricom)"),
            Ok(("Kenya".into(), "Safaricom".into()))
        );
        assert_eq!(
            split_key("  Côte d'Ivoire ( Orange CI ) "),
            Ok(("Côte d'Ivoire".into(), "Orange CI".into()))
        );
        for bad in [
            "Kenya Safaricom",
            "(Safaricom)",
            "Kenya ()",
            "Kenya )Safaricom(",
            "Kenya (Safaricom) x",
            "Kenya (Safaricom",
        ] {
            assert!(split_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values() {
        assert_eq!(
            money(&json!("USD 12.50")),
            Ok(Value::Money {
                currency: "USD".into(),
                amount: Decimal::from_units(125_000)
            })
        );
        for bad in [
            json!("USD"),
            json!("12.50"),
            json!("usd 1"),
            json!("USD 1,5"),
            json!(12.5),
            json!(null),
            json!("USD 1 2"),
        ] {
            assert!(money(&bad).is_err(), "{bad}");
        }
        assert_eq!(count(&json!(7)), Ok(Value::Count(7)));
        assert_eq!(count(&json!("7")), Ok(Value::Count(7)));
        for bad in [
            json!(-1),
            json!(1.5),
            json!("seven"),
            json!(null),
            json!([]),
        ] {
            assert!(count(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_user_with_malformed_elements_keeps_the_rest() {
        let d = Date::parse("2016-08-18").unwrap();
        let r = json!({"responses": {"networkStats": [{"date": "2016-08-18", "elements": {
            "Kenya (Safaricom)": "USD 12.50", "Kenya Airtel": "USD 1", "Uganda (MTN)": "USD x", "Nigeria (Glo)": 3,
            "Rwanda (MTN)": "KES 0.5"}}]}});
        let (rows, bad) = user_stats(&r, "alice", d, true).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(bad.len(), 3);
        assert!(bad.iter().any(|m| m.raw.contains("Kenya Airtel")));
        assert!(user_stats(&json!({"x": 1}), "alice", d, true).is_err());
        let wrong_date = json!({"responses": {"networkStats": [{"date": "2016-08-19", "elements": {"Kenya (Safaricom)": "USD 1"}}]}});
        let (rows, bad) = user_stats(&wrong_date, "alice", d, true).unwrap();
        assert_eq!((rows.len(), bad.len()), (0, 1));
    }

    #[test]
    fn user_lists() {
        assert_eq!(
            user_list(&json!({"responses": {"userStats": [{"elements": ["a", "b"]}]}})),
            Ok(vec!["a".into(), "b".into()])
        );
        assert!(user_list(&json!({"responses": {"userStats": [{"elements": ["a", 3]}]}})).is_err());
        assert!(user_list(&json!({"responses": {}})).is_err());
    }
}
