//! The registry writes of `hvhost register` and `unregister`: one string value under a key of
//! HKEY_LOCAL_MACHINE created as needed, or a key deleted. In the 64-bit view (KEY_WOW64_64KEY), where
//! Hyper-V reads GuestCommunicationServices, whichever build of hvhost.exe writes it. Errors are Win32
//! codes; [`super::registry::error`] words them.

use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_SUCCESS};
use windows_sys::Win32::System::Registry as reg;

/// A string as the W functions take it: UTF-16, NUL-terminated.
fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain([0]).collect()
}

/// Sets `HKLM\key` `name` = `value` (REG_SZ), creating the key if needed.
pub fn set_string(key: &str, name: &str, value: &str) -> Result<(), u32> {
    let key = wide(key);
    let mut handle: reg::HKEY = std::ptr::null_mut();
    // SAFETY: the key name is NUL-terminated and alive for the call; `handle` receives the opened key.
    let created = unsafe {
        reg::RegCreateKeyExW(
            reg::HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            0,
            std::ptr::null(),
            reg::REG_OPTION_NON_VOLATILE,
            reg::KEY_SET_VALUE | reg::KEY_WOW64_64KEY,
            std::ptr::null(),
            &mut handle,
            std::ptr::null_mut(),
        )
    };
    if created != ERROR_SUCCESS {
        return Err(created);
    }
    let name = wide(name);
    let data: Vec<u8> = wide(value)
        .iter()
        .flat_map(|unit| unit.to_le_bytes())
        .collect();
    // SAFETY: `handle` is the key just opened; name and data (REG_SZ: UTF-16 with its NUL, length in bytes)
    // are alive for the call.
    let set = unsafe {
        reg::RegSetValueExW(
            handle,
            name.as_ptr(),
            0,
            reg::REG_SZ,
            data.as_ptr(),
            data.len() as u32,
        )
    };
    // SAFETY: `handle` is open and closed once, here.
    unsafe { reg::RegCloseKey(handle) };
    if set != ERROR_SUCCESS {
        return Err(set);
    }
    Ok(())
}

/// Deletes `HKLM\key` (which has no subkeys); false when it was not there.
pub fn delete_key(key: &str) -> Result<bool, u32> {
    let key = wide(key);
    // SAFETY: the key name is NUL-terminated and alive for the call.
    let deleted = unsafe {
        reg::RegDeleteKeyExW(
            reg::HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            reg::KEY_WOW64_64KEY,
            0,
        )
    };
    match deleted {
        ERROR_SUCCESS => Ok(true),
        ERROR_FILE_NOT_FOUND => Ok(false),
        code => Err(code),
    }
}
