package audit

import (
	"encoding/json"
	"fmt"
	"os"
)

// Head is the content of the head file: the last checkpoint written.
type Head struct {
	Instance string `json:"instance"`
	Seq      uint64 `json:"seq"`
	Hash     string `json:"hash"`
	File     string `json:"file"`
	TS       string `json:"ts"`
}

// ReadHead reads a head file.
func ReadHead(path string) (*Head, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &h, nil
}
