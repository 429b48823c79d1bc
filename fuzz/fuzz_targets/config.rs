//! The config loader: total on any text; an accepted config validates and survives a
//! serialize/parse round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udp_director::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::from_yaml(text) {
        config.validate().expect("accepted configs are valid");
        let yaml = serde_yaml::to_string(&config).expect("serializes");
        let again = Config::from_yaml(&yaml).expect("round trip");
        assert_eq!(again, config);
    }
});
