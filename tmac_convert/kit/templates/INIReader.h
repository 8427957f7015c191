/*
 * t-mac/INIReader.h for a T-MAC kernel kit written by tmac-convert: reads kcfg.ini.
 *
 * The interface T-MAC's wrapper uses (the one of the inih library's INIReader): construct from a file
 * name, ParseError(), Sections(), Get/GetInteger/GetReal/GetBoolean(section, name, default).
 * Format: "[section]" lines, "name = value" or "name: value" lines, comments from ';' or '#' at the
 * start of a line or from " ;" inside one.  Section and value names are looked up case-insensitively.
 */
#ifndef TMAC_KIT_INIREADER_H_
#define TMAC_KIT_INIREADER_H_

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>

class INIReader {
 public:
  // Parses the file; ParseError() tells how that went.
  explicit INIReader(const std::string& filename) : _path(filename) {
    std::ifstream in(filename.c_str());
    if (!in) {
      _error = -1;
      return;
    }
    std::string line, section;
    int lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (lineno == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
      std::string s = strip(line);
      if (s.empty() || s[0] == ';' || s[0] == '#') continue;
      if (s[0] == '[') {
        const size_t end = s.find(']');
        if (end == std::string::npos) {
          if (_error == 0) _error = lineno;
          continue;
        }
        section = strip(s.substr(1, end - 1));
        _sections.insert(section);
        continue;
      }
      const size_t eq = s.find_first_of("=:");
      if (eq == std::string::npos) {
        if (_error == 0) _error = lineno;
        continue;
      }
      std::string value = s.substr(eq + 1);
      const size_t comment = value.find(" ;");
      if (comment != std::string::npos) value.erase(comment);
      _values[key(section, strip(s.substr(0, eq)))] = strip(value);
    }
  }

  // 0 on success, -1 if the file could not be opened, else the first line with a syntax error.
  int ParseError() const { return _error; }
  const std::string& Path() const { return _path; }

  // Section names as written in the file.
  const std::set<std::string>& Sections() const { return _sections; }

  bool HasSection(const std::string& section) const { return _sections.count(section) > 0; }
  bool HasValue(const std::string& section, const std::string& name) const {
    return _values.count(key(section, name)) > 0;
  }

  std::string Get(const std::string& section, const std::string& name, const std::string& default_value) const {
    auto it = _values.find(key(section, name));
    return it == _values.end() ? default_value : it->second;
  }

  // The value as an integer (decimal, or hex with 0x), or default_value if absent or not a number.
  long GetInteger(const std::string& section, const std::string& name, long default_value) const {
    const std::string v = Get(section, name, "");
    if (v.empty()) return default_value;
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 0);
    return (end != nullptr && *end == '\0') ? n : default_value;
  }

  double GetReal(const std::string& section, const std::string& name, double default_value) const {
    const std::string v = Get(section, name, "");
    if (v.empty()) return default_value;
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    return (end != nullptr && *end == '\0') ? d : default_value;
  }

  bool GetBoolean(const std::string& section, const std::string& name, bool default_value) const {
    std::string v = lower(Get(section, name, ""));
    if (v == "true" || v == "yes" || v == "on" || v == "1") return true;
    if (v == "false" || v == "no" || v == "off" || v == "0") return false;
    return default_value;
  }

 private:
  static std::string strip(const std::string& s) {
    size_t a = 0, b = s.size();
    while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
    while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
    return s.substr(a, b - a);
  }
  static std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }
  static std::string key(const std::string& section, const std::string& name) {
    return lower(section) + "=" + lower(name);
  }

  std::string _path;
  int _error = 0;
  std::set<std::string> _sections;
  std::map<std::string, std::string> _values;
};

#endif  // TMAC_KIT_INIREADER_H_
