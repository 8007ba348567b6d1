import Foundation
import os

/// What iOS says about the phone, for the screens and the self-test report (the benchmark's `device` block is the
/// kit's `DeviceInfo.current()`).
enum DeviceFacts {
    /// The model identifier, e.g. "iPhone16,1" (`uname`'s machine; "arm64" / "x86_64" on the simulator).
    static var machine: String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: info.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }

    /// "iOS 18.2 (Build 22C152)".
    static var system: String { "iOS \(ProcessInfo.processInfo.operatingSystemVersionString)" }

    /// The app's version from its Info.plist.
    static var appVersion: String {
        Foundation.Bundle.main.object(forInfoDictionaryKey: "CFBundleShortVersionString") as? String ?? "unknown"
    }

    /// Bytes this process may still allocate before iOS ends it (`os_proc_available_memory`; larger with the
    /// `com.apple.developer.kernel.increased-memory-limit` entitlement); what the kit checks a bundle against.
    static var availableMemory: Int { os_proc_available_memory() }

    static var physicalMemory: UInt64 { ProcessInfo.processInfo.physicalMemory }

    /// One line for the start screen and the self-test report.
    static var summary: String {
        String(format: "%@, %@, %.1f GB RAM, %.0f MB available to the app, PocketVLM %@", machine, system,
               Double(physicalMemory) / 1e9, Double(availableMemory) / 1e6, appVersion)
    }
}
