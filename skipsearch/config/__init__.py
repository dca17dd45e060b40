"""What users write and ship: study configs, profiles and the profile's JSON Schema. Imports the
engine only."""
