//! IoT sensor messages: JSON on an MQTT topic, `{"value": …}` (or any field), or a bare
//! value. Numbers are taken as they are; booleans and the usual state words map to 1 and 0
//! (open/on/true/detected/active/motion → 1, closed/off/false/clear/inactive/idle → 0), so
//! rules compare one kind of value.

/// The reading in `payload`'s `field` (the whole payload when it is not an object).
pub fn parse_value(payload: &[u8], field: &str) -> Result<f64, String> {
    let v: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        // A bare word (`open`) is not JSON: take it as text.
        Err(_) => serde_json::Value::String(
            std::str::from_utf8(payload)
                .map_err(|_| "payload is neither JSON nor text".to_string())?
                .trim()
                .to_string(),
        ),
    };
    let x = match &v {
        serde_json::Value::Object(m) => m
            .get(field)
            .ok_or_else(|| format!("no field {field:?} in the message"))?,
        other => other,
    };
    match x {
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("{n} is not a finite number")),
        serde_json::Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "open" | "on" | "true" | "detected" | "active" | "motion" => Ok(1.0),
            "closed" | "off" | "false" | "clear" | "inactive" | "idle" => Ok(0.0),
            other => other
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("{s:?} is not a number or a known state word")),
        },
        other => Err(format!("{other} is not a reading")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_value;

    #[test]
    fn readings_of_every_shape() {
        assert_eq!(parse_value(br#"{"value": 21.5}"#, "value"), Ok(21.5));
        assert_eq!(parse_value(br#"{"temp": -3}"#, "temp"), Ok(-3.0));
        assert_eq!(parse_value(br#"{"contact": "OPEN"}"#, "contact"), Ok(1.0));
        assert_eq!(parse_value(br#"{"value": false}"#, "value"), Ok(0.0));
        assert_eq!(parse_value(b"closed", "value"), Ok(0.0));
        assert_eq!(parse_value(b"17.25", "value"), Ok(17.25));
        assert!(
            parse_value(br#"{"x": 1}"#, "value")
                .unwrap_err()
                .contains("no field")
        );
        assert!(parse_value(br#"{"value": "ajar"}"#, "value").is_err());
        assert!(parse_value(br#"{"value": [1]}"#, "value").is_err());
        assert!(parse_value(&[0xff, 0xfe], "value").is_err());
    }
}
