//! Conversation items: `conversation.item.create`, `.truncate`, `.delete` and `.retrieve`, and
//! the checks a client's item must pass.

use super::*;

impl Session {
    pub(super) fn last_item_id(&self) -> Value {
        self.items
            .last()
            .map_or(Value::Null, |item| Value::String(item.id.clone()))
    }

    pub(super) fn previous_of(&self, index: usize) -> Value {
        index
            .checked_sub(1)
            .and_then(|i| self.items.get(i))
            .map_or(Value::Null, |item| Value::String(item.id.clone()))
    }

    pub(super) fn find_item(&self, id: &str) -> Option<usize> {
        self.items.iter().position(|item| item.id == id)
    }

    pub(super) fn required_item_id(event: &Map<String, Value>) -> Result<&str, ApiError> {
        match event.get("item_id") {
            Some(Value::String(id)) => Ok(id),
            Some(other) => Err(ApiError::invalid_type("item_id", "a string", other)),
            None => Err(ApiError::missing("item_id")),
        }
    }

    pub(super) fn not_found(id: &str) -> ApiError {
        ApiError::invalid_value("item_id", format!("Item with item_id not found: {id}"))
    }

    pub(super) fn item_create(
        &mut self,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let item = match event.get("item") {
            Some(Value::Object(item)) => item,
            Some(other) => return Err(ApiError::invalid_type("item", "an object", other)),
            None => return Err(ApiError::missing("item")),
        };
        let insert_at = match event.get("previous_item_id") {
            None | Some(Value::Null) => self.items.len(),
            Some(Value::String(id)) if id == "root" => 0,
            Some(Value::String(id)) => match self.find_item(id) {
                Some(index) => index + 1,
                None => {
                    return Err(ApiError::invalid_value(
                        "previous_item_id",
                        format!("Previous item with id '{id}' not found."),
                    ));
                }
            },
            Some(other) => {
                return Err(ApiError::invalid_type(
                    "previous_item_id",
                    "a string",
                    other,
                ));
            }
        };
        let id = match item.get("id") {
            None | Some(Value::Null) => item_id(),
            Some(Value::String(id)) if self.find_item(id).is_some() => {
                return Err(ApiError::invalid_value(
                    "item.id",
                    format!("Item with id '{id}' already exists."),
                ));
            }
            Some(Value::String(id)) => id.clone(),
            Some(other) => return Err(ApiError::invalid_type("item.id", "a string", other)),
        };
        let kind = item.get("type").unwrap_or(&Value::Null);
        let (role, mut reported, new_call_id) = match kind.as_str() {
            Some("message") => {
                check_item_keys(item, &["role", "content"])?;
                let (role, content) = validate_message(item)?;
                let mut reported = Map::new();
                reported.insert(
                    "role".into(),
                    item.get("role").cloned().unwrap_or(Value::Null),
                );
                reported.insert("content".into(), Value::Array(content));
                (role, reported, None)
            }
            Some("function_call") => {
                check_item_keys(item, &["call_id", "name", "arguments"])?;
                let call_id = match item.get("call_id") {
                    Some(Value::String(call_id)) => call_id.clone(),
                    Some(other) => {
                        return Err(ApiError::invalid_type("item.call_id", "a string", other));
                    }
                    None => return Err(ApiError::missing("item.call_id")),
                };
                let mut reported = Map::new();
                reported.insert("call_id".into(), Value::String(call_id.clone()));
                for key in ["name", "arguments"] {
                    match item.get(key) {
                        Some(value @ Value::String(_)) => {
                            reported.insert(key.into(), value.clone());
                        }
                        Some(other) => {
                            return Err(ApiError::invalid_type(
                                &format!("item.{key}"),
                                "a string",
                                other,
                            ));
                        }
                        None => return Err(ApiError::missing(&format!("item.{key}"))),
                    }
                }
                (Role::Tool, reported, Some(call_id))
            }
            Some("function_call_output") => {
                check_item_keys(item, &["call_id", "output"])?;
                let call_id = match item.get("call_id") {
                    Some(Value::String(call_id)) => call_id,
                    Some(other) => {
                        return Err(ApiError::invalid_type("item.call_id", "a string", other));
                    }
                    None => return Err(ApiError::missing("item.call_id")),
                };
                if !self.call_ids.contains(call_id) {
                    return Err(ApiError::invalid_value(
                        "item.call_id",
                        format!("Tool call ID '{call_id}' not found in conversation."),
                    ));
                }
                let output = match item.get("output") {
                    Some(output @ Value::String(_)) => output.clone(),
                    Some(other) => {
                        return Err(ApiError::invalid_type("item.output", "a string", other));
                    }
                    None => return Err(ApiError::missing("item.output")),
                };
                let mut reported = Map::new();
                reported.insert("call_id".into(), Value::String(call_id.clone()));
                reported.insert("output".into(), output.clone());
                let text = output.as_str().unwrap_or_default().to_owned();
                self.function_outputs.push(FunctionOutput {
                    call_id: call_id.clone(),
                    name: self.call_names.get(call_id).cloned().unwrap_or_default(),
                    output: text.clone(),
                    at: Instant::now(),
                });
                self.unspoken_outputs.push(text);
                (Role::Tool, reported, None)
            }
            _ => {
                return Err(ApiError::not_one_of(
                    "item.type",
                    kind,
                    &["message", "function_call", "function_call_output"],
                ));
            }
        };
        reported.insert("id".into(), Value::String(id.clone()));
        reported.insert("object".into(), json!("realtime.item"));
        reported.insert("type".into(), kind.clone());
        reported.insert("status".into(), json!("completed"));
        let reported = Value::Object(reported);
        if let Some(call_id) = new_call_id {
            self.call_ids.insert(call_id);
        }
        self.items.insert(
            insert_at,
            Item {
                id,
                json: reported.clone(),
                role,
                user_audio: None,
                assistant_samples: 0,
                has_audio: false,
            },
        );
        let previous = self.previous_of(insert_at);
        self.emit(
            out,
            json!({"type": "conversation.item.added", "previous_item_id": previous, "item": reported}),
        );
        self.emit(
            out,
            json!({"type": "conversation.item.done", "previous_item_id": previous, "item": reported}),
        );
        Ok(())
    }

    pub(super) fn item_truncate(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let index = event
            .get("item_id")
            .and_then(Value::as_str)
            .and_then(|id| self.find_item(id));
        let produced_ms = index.map_or(0, |i| {
            (self.items[i].assistant_samples / SAMPLES_PER_MS) as u64
        });
        let audio_end = event.get("audio_end_ms");
        let mut record = Truncation {
            item_id: event
                .get("item_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            content_index: event
                .get("content_index")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0),
            audio_end_ms: audio_end
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
                .unwrap_or(0),
            produced_ms,
            at: now,
            accepted: false,
        };
        let result = self.check_truncate(event, index, produced_ms);
        record.accepted = result.is_ok();
        self.truncations.push(record);
        let (index, content_index, audio_end_ms) = result?;
        let item = &mut self.items[index];
        item.assistant_samples = audio_end_ms as usize * SAMPLES_PER_MS;
        // The server forgets the words the caller never heard (§7.2).
        if let Some(transcript) = item.json.pointer_mut("/content/0/transcript") {
            *transcript = Value::Null;
        }
        let item_id = item.id.clone();
        tracing::debug!(audio_end_ms, produced_ms, "item truncated");
        self.emit(
            out,
            json!({"type": "conversation.item.truncated", "item_id": item_id,
                   "content_index": content_index, "audio_end_ms": audio_end_ms}),
        );
        Ok(())
    }

    pub(super) fn check_truncate(
        &self,
        event: &Map<String, Value>,
        index: Option<usize>,
        produced_ms: u64,
    ) -> Result<(usize, u64, u64), ApiError> {
        let item_id = Self::required_item_id(event)?;
        let content_index = match event.get("content_index") {
            Some(value) => value.as_u64().ok_or_else(|| {
                ApiError::invalid_type("content_index", "a non-negative integer", value)
            })?,
            None => return Err(ApiError::missing("content_index")),
        };
        let audio_end_ms = match event.get("audio_end_ms") {
            Some(value) if value.is_u64() => value.as_u64().unwrap_or(0),
            Some(value) if value.is_i64() => {
                return Err(ApiError::invalid_value(
                    "audio_end_ms",
                    "Invalid 'audio_end_ms': integer below minimum value. Expected a value >= 0.",
                ));
            }
            Some(value) => return Err(ApiError::invalid_type("audio_end_ms", "an integer", value)),
            None => return Err(ApiError::missing("audio_end_ms")),
        };
        let index = index.ok_or_else(|| Self::not_found(item_id))?;
        let item = &self.items[index];
        if item.role != Role::Assistant || !item.has_audio {
            return Err(ApiError::invalid_value(
                "item_id",
                "Only model output audio messages can be truncated",
            ));
        }
        if content_index != 0 {
            return Err(ApiError::invalid_value(
                "content_index",
                format!(
                    "Invalid 'content_index': item {item_id} has no content at index {content_index}."
                ),
            ));
        }
        if audio_end_ms > produced_ms {
            return Err(ApiError::invalid_value(
                "audio_end_ms",
                format!(
                    "Audio content of {produced_ms}ms is already shorter than {audio_end_ms}ms"
                ),
            ));
        }
        Ok((index, content_index, audio_end_ms))
    }

    pub(super) fn item_delete(
        &mut self,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let item_id = Self::required_item_id(event)?;
        let index = self
            .find_item(item_id)
            .ok_or_else(|| Self::not_found(item_id))?;
        let item = self.items.remove(index);
        self.emit(
            out,
            json!({"type": "conversation.item.deleted", "item_id": item.id}),
        );
        Ok(())
    }

    pub(super) fn item_retrieve(
        &mut self,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let item_id = Self::required_item_id(event)?;
        let index = self
            .find_item(item_id)
            .ok_or_else(|| Self::not_found(item_id))?;
        let item = &self.items[index];
        let mut reported = item.json.clone();
        // Unlike every other event, retrieve includes the audio (§9).
        if let Some(range) = &item.user_audio
            && let Some(samples) = self.input.get(range.clone())
            && let Some(part) = reported.pointer_mut("/content/0")
            && let Value::Object(part) = part
        {
            let mut bytes = Vec::new();
            self.effective.input_format.encode(samples, &mut bytes);
            part.insert("audio".into(), Value::String(BASE64.encode(bytes)));
        }
        self.emit(
            out,
            json!({"type": "conversation.item.retrieved", "item": reported}),
        );
        Ok(())
    }

    // ---- responses ----
}

pub(super) fn check_item_keys(
    item: &Map<String, Value>,
    specific: &[&str],
) -> Result<(), ApiError> {
    const COMMON: &[&str] = &["id", "type", "object", "status"];
    match item
        .keys()
        .find(|key| !COMMON.contains(&key.as_str()) && !specific.contains(&key.as_str()))
    {
        Some(key) => Err(ApiError::unknown(&format!("item.{key}"))),
        None => Ok(()),
    }
}

/// Checks a message item's role and content (§9) and returns the content as it is reported
/// (input audio bytes are never echoed).
pub(super) fn validate_message(item: &Map<String, Value>) -> Result<(Role, Vec<Value>), ApiError> {
    let role_value = item
        .get("role")
        .ok_or_else(|| ApiError::missing("item.role"))?;
    let role = match role_value.as_str() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        _ => {
            return Err(ApiError::not_one_of(
                "item.role",
                role_value,
                &["user", "assistant", "system"],
            ));
        }
    };
    let parts = match item.get("content") {
        Some(Value::Array(parts)) if !parts.is_empty() => parts,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_value(
                "item.content",
                "Invalid 'item.content': empty array.",
            ));
        }
        Some(other) => return Err(ApiError::invalid_type("item.content", "an array", other)),
        None => return Err(ApiError::missing("item.content")),
    };
    let allowed: &[&str] = match role {
        Role::User => &["input_text", "input_audio", "input_image"],
        Role::System => &["input_text"],
        _ => &["output_text"],
    };
    let mut reported = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        let path = format!("item.content[{index}]");
        let Value::Object(fields) = part else {
            return Err(ApiError::invalid_type(&path, "an object", part));
        };
        let kind = fields.get("type").unwrap_or(&Value::Null);
        let kind_str = kind.as_str().unwrap_or_default();
        if role == Role::Assistant && matches!(kind_str, "output_audio" | "audio") {
            return Err(ApiError::invalid_value(
                &format!("{path}.type"),
                "Assistant audio content cannot be created; use 'output_text'.",
            ));
        }
        if !allowed.contains(&kind_str) {
            return Err(ApiError::not_one_of(&format!("{path}.type"), kind, allowed));
        }
        let (required, optional): (&str, &[&str]) = match kind_str {
            "input_audio" => ("audio", &["transcript"]),
            "input_image" => ("image_url", &["detail"]),
            _ => ("text", &[]),
        };
        if let Some(key) = fields
            .keys()
            .find(|key| *key != "type" && *key != required && !optional.contains(&key.as_str()))
        {
            return Err(ApiError::unknown(&format!("{path}.{key}")));
        }
        let value = match fields.get(required) {
            Some(Value::String(value)) => value,
            Some(other) => {
                return Err(ApiError::invalid_type(
                    &format!("{path}.{required}"),
                    "a string",
                    other,
                ));
            }
            None => return Err(ApiError::missing(&format!("{path}.{required}"))),
        };
        if kind_str == "input_audio" {
            BASE64.decode(value).map_err(|_| {
                ApiError::invalid_value(
                    &format!("{path}.audio"),
                    "Invalid 'audio'. Expected base64-encoded audio bytes.",
                )
            })?;
            let transcript = fields.get("transcript").cloned().unwrap_or(Value::Null);
            reported.push(json!({"type": "input_audio", "transcript": transcript}));
        } else {
            reported.push(part.clone());
        }
    }
    Ok((role, reported))
}
