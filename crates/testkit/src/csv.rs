//! The CSV psql prints with `--csv` (RFC 4180: `,` between fields, `"` quoting with `""` for a quote,
//! quoted fields may span lines). Used for `psql_rows`, where values may contain separators or newlines.
//! Note that psql prints NULL and the empty string alike (an empty unquoted field).

/// Parses CSV text into records of fields. Each record ends at an unquoted newline; a final newline does
/// not start another record; an empty line is a record with one empty field.
pub(crate) fn parse_csv(s: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    let mut in_record = false;
    while let Some(c) = chars.next() {
        in_record = true;
        match c {
            '"' if field.is_empty() => {
                // A quoted field: read to the closing quote.
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => field.push(c),
                        None => return Err("unterminated quoted field".to_string()),
                    }
                }
                match chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => {}
                    Some(c) => return Err(format!("{c:?} after a closing quote")),
                }
            }
            '"' => return Err("quote inside an unquoted field".to_string()),
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                in_record = false;
            }
            c => field.push(c),
        }
    }
    if in_record {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quote(f: &str) -> String {
        if f.contains([',', '"', '\n', '\r']) || f.is_empty() {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    }

    #[test]
    fn psql_shapes() {
        assert_eq!(parse_csv("").unwrap(), Vec::<Vec<String>>::new());
        assert_eq!(parse_csv("1,a|b,,\n").unwrap(), [["1", "a|b", "", ""]]);
        assert_eq!(parse_csv("\"x\ny\",2\n").unwrap(), [["x\ny", "2"]]);
        assert_eq!(parse_csv("\n").unwrap(), [[""]]);
        assert_eq!(parse_csv("a\nb").unwrap(), [["a"], ["b"]]);
        assert_eq!(
            parse_csv("\"say \"\"hi\"\"\"\r\n").unwrap(),
            [["say \"hi\""]]
        );
    }

    #[test]
    fn malformed() {
        assert!(parse_csv("\"open").is_err());
        assert!(parse_csv("\"a\"b").is_err());
        assert!(parse_csv("a\"b").is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(rows in proptest::collection::vec(
            proptest::collection::vec("[a-z,\"\n ]{0,6}", 1..4), 0..5)
        ) {
            let text: String = rows
                .iter()
                .map(|r| r.iter().map(|f| quote(f)).collect::<Vec<_>>().join(",") + "\n")
                .collect();
            prop_assert_eq!(parse_csv(&text).unwrap(), rows);
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_csv(&s);
        }
    }
}
